"""The compose stack, checked without a Docker engine: real compose parsers, and the
services, healthchecks, ports, dependencies and settings it must have."""

from __future__ import annotations

import shutil
import subprocess

import compose_spec
import pytest

from tests.conftest import ROOT
from tests.deploy.conftest import (
    COMPOSE,
    env_example,
    interpolate,
    load_compose,
    semsearch_vars,
    settings_env_vars,
)

SERVICES = {
    "redis",
    "qdrant",
    "embedder",
    "reranker",
    "gateway",
    "prometheus",
    "grafana",
    "jaeger",  # profile `tracing`: started only when asked for
}


def test_both_files_pass_the_compose_specification() -> None:
    for name in ("compose.yml", "compose.cpu.yml"):
        text = interpolate((COMPOSE / name).read_text(), env_example())
        spec = compose_spec.PyCompose.from_yaml(text).to_spec()
        assert spec.services, name


def test_docker_compose_config_accepts_the_stack() -> None:
    assert shutil.which("docker-compose"), (
        "docker-compose is not installed: `make test` installs it (apt-get), "
        "or install the Debian package docker-compose yourself"
    )
    result = subprocess.run(
        [
            "docker-compose",
            "-f",
            str(COMPOSE / "compose.yml"),
            "--env-file",
            str(COMPOSE / ".env.example"),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_services_healthchecks_and_ports() -> None:
    services = load_compose("compose.yml")["services"]
    assert set(services) == SERVICES
    for name in ("embedder", "reranker", "gateway"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "/ready" in check, name
    assert "8001/ready" in " ".join(services["embedder"]["healthcheck"]["test"])
    assert "8002/ready" in " ".join(services["reranker"]["healthcheck"]["test"])
    assert services["gateway"]["ports"] == ["8000:8000"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "/readyz" in services["qdrant"]["healthcheck"]["test"][1]
    assert services["gateway"]["depends_on"] == {
        "embedder": {"condition": "service_healthy"},
        "reranker": {"condition": "service_started"},  # degraded answers beat no answers
        "redis": {"condition": "service_healthy"},
        "qdrant": {"condition": "service_healthy"},
    }


def test_images_gpu_reservations_and_the_cpu_override() -> None:
    base = load_compose("compose.yml")["services"]
    cpu = load_compose("compose.cpu.yml")["services"]
    for name in ("embedder", "reranker"):
        devices = base[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert base[name]["build"]["dockerfile"] == "deploy/docker/model-service.cuda.Dockerfile"
        assert cpu[name]["build"]["dockerfile"] == "deploy/docker/model-service.Dockerfile"
        assert cpu[name]["deploy"] == {"!reset": True}
        assert base[name]["command"] == ["semsearch", "serve", name]
    assert base["gateway"]["build"]["dockerfile"] == "deploy/docker/gateway.Dockerfile"
    for name in ("gateway", "embedder", "reranker"):
        assert (ROOT / base[name]["build"]["dockerfile"]).is_file()


def test_the_gateway_and_redis_go_before_model_compute_on_shared_cores() -> None:
    """Containers are CPU groups of their own: nice values inside the model services order
    their own threads only, so the weight between containers is set here."""
    base = load_compose("compose.yml")["services"]
    for models in (base, load_compose("compose.cpu.yml")["services"]):
        weight = max(models[name].get("cpu_shares", 1024) for name in ("embedder", "reranker"))
        for front in ("gateway", "redis"):
            assert base[front]["cpu_shares"] >= 4 * weight, front


def test_volumes_for_index_qdrant_models_and_grafana() -> None:
    stack = load_compose("compose.yml")
    assert set(stack["volumes"]) == {"index", "qdrant-storage", "model-cache", "grafana-data"}
    services = stack["services"]
    assert "index:/data/index" in services["gateway"]["volumes"]
    assert "qdrant-storage:/qdrant/storage" in services["qdrant"]["volumes"]
    assert "model-cache:/models" in services["embedder"]["volumes"]
    mounted = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for path in (
        "../prometheus/prometheus.yml",
        "../prometheus/alerts.yml",
        "../grafana/provisioning",
        "../grafana/dashboards",
    ):
        assert path in mounted
        assert (COMPOSE / path).exists(), path


def test_gateway_environment_is_the_full_stack_with_auth_on() -> None:
    env = load_compose("compose.yml")["services"]["gateway"]["environment"]
    assert env["SEMSEARCH_EMBEDDER_URL"] == "http://embedder:8001"
    assert env["SEMSEARCH_RERANKER_URL"] == "http://reranker:8002"
    assert env["SEMSEARCH_REDIS_URL"] == "redis://redis:6379/0"
    assert env["SEMSEARCH_INDEX_BACKEND"] == "qdrant"
    assert env["SEMSEARCH_QDRANT_URL"] == "http://qdrant:6333"
    assert env["SEMSEARCH_FALLBACK_INDEX_DIR"] == "/data/index"
    assert env["SEMSEARCH_ENVIRONMENT"] == "production"
    assert env["SEMSEARCH_API_KEYS"] == env_example()["SEMSEARCH_API_KEYS"]
    with pytest.raises(KeyError, match="SEMSEARCH_API_KEYS"):  # no .env, no stack
        load_compose("compose.yml", env={})


def test_every_setting_the_stack_sets_exists() -> None:
    known = settings_env_vars()
    services = load_compose("compose.yml")["services"]
    used = set().union(*(semsearch_vars(s.get("environment", {})) for s in services.values()))
    used |= semsearch_vars(env_example())
    assert used, "expected SEMSEARCH_* settings in the stack"
    assert used <= known, f"not settings of any service: {sorted(used - known)}"


def test_tracing_is_off_unless_an_endpoint_is_given() -> None:
    services = load_compose("compose.yml")["services"]
    assert services["jaeger"]["profiles"] == ["tracing"]
    for name in ("embedder", "reranker", "gateway"):
        # the standard variable, empty by default: app.tracing then does nothing
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in services[name]["environment"], name
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=\n" in (COMPOSE / ".env.example").read_text()


def test_prometheus_scrapes_all_three_services() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert targets == {"gateway:8000", "embedder:8001", "reranker:8002"}
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
