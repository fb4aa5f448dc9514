"""Alerts, dashboard and autoscaling rules only use metrics the services really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from services.embedder.main import create_app as embedder_app
from services.gateway.main import create_app as gateway_app
from services.reranker.main import create_app as reranker_app
from tests.deploy.conftest import DEPLOY, K8S
from tests.services.conftest import asgi_client

METRIC = re.compile(r"\bsemsearch_[a-z0-9_]+")


@pytest.fixture(scope="module")
def exported(
    tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory
) -> set[str]:
    """Sample names on /metrics of the three services after a little real traffic."""
    import asyncio

    async def scrape() -> set[str]:
        names: set[str] = set()
        async with asgi_client(
            embedder_app(EmbedderSettings(model=str(tiny_bi_encoder)))
        ) as client:
            await client.post("/v1/embeddings", json={"input": ["warm", "up"]})
            names |= _samples((await client.get("/metrics")).text)
        async with asgi_client(
            reranker_app(RerankerSettings(model=str(tiny_cross_encoder)))
        ) as client:
            await client.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
            names |= _samples((await client.get("/metrics")).text)
        empty = GatewaySettings(index_dir=tmp_path_factory.mktemp("no-index"))
        async with asgi_client(gateway_app(empty), wait_ready=False) as client:
            await client.post("/v1/search", json={"query": "q"})
            names |= _samples((await client.get("/metrics")).text)
        return names

    return asyncio.run(scrape())


SERIES_OF_TYPE = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def _samples(text: str) -> set[str]:
    """Every series name a query may use: a family declared on /metrics (`# TYPE`) exports
    its series as soon as a label set is first used, so labelled metrics count before that."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            family = name.removesuffix("_total") if kind == "counter" else name
            names |= {family + suffix for suffix in SERIES_OF_TYPE.get(kind, ("",))}
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
    return names


def adapter_metrics() -> set[str]:
    rules = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())
    config = yaml.safe_load(rules["data"]["config.yaml"])
    return {rule["name"]["as"] for rule in config["rules"]}


def used_in(text: str) -> set[str]:
    return set(METRIC.findall(text))


def test_alert_rules_use_exported_metrics(exported: set[str]) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 6
    used = used_in("\n".join(exprs))
    assert used <= exported, sorted(used - exported)
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {
        "SemsearchSearchLatencyHigh",
        "SemsearchErrorRateHigh",
        "SemsearchCircuitOpen",
        "SemsearchModelQueueBacklog",
    } <= names


def test_dashboard_uses_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "semsearch.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = used_in("\n".join(exprs))
    assert used <= exported, sorted(used - exported)
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency by stage", "per second", "cache hit", "degraded", "batch size", "queue"):
        assert topic in titles, topic


def test_autoscaling_uses_exported_or_adapter_metrics(exported: set[str]) -> None:
    rules = (K8S / "prometheus-adapter-rules.yaml").read_text()
    series = used_in(rules) - adapter_metrics()
    assert series <= exported, sorted(series - exported)
    hpa_metrics = used_in((K8S / "embedder.yaml").read_text() + (K8S / "reranker.yaml").read_text())
    assert hpa_metrics <= exported | adapter_metrics()
