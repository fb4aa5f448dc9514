"""Kubernetes manifests against the Kubernetes schemas, and the Dockerfiles against hadolint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, K8S, k8s_documents, semsearch_vars, settings_env_vars

BIN = Path(sys.executable).parent


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


def test_services_have_probes_resources_and_disruption_budgets() -> None:
    deployments = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    for name in ("semsearch-embedder", "semsearch-reranker", "semsearch-gateway"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        assert container["resources"]["requests"] and container["resources"]["limits"], name
        assert deployments[name]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    for name in ("semsearch-embedder", "semsearch-reranker"):
        limits = deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]
        assert limits["nvidia.com/gpu"] == 1
    assert set(by_kind("PodDisruptionBudget")) == {
        "semsearch-embedder",
        "semsearch-reranker",
        "semsearch-gateway",
        "semsearch-qdrant",
    }
    assert "semsearch" in by_kind("Ingress")


def test_autoscaling_on_queue_metrics_and_cpu() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    for name in ("semsearch-embedder", "semsearch-reranker"):
        metrics = {m["pods"]["metric"]["name"] for m in hpas[name]["spec"]["metrics"]}
        assert metrics == {"semsearch_batch_queue_depth", "semsearch_queue_to_compute_ratio"}
    gateway = hpas["semsearch-gateway"]["spec"]["metrics"][0]
    assert gateway["resource"]["name"] == "cpu"
    rules = by_kind("ConfigMap")["semsearch-prometheus-adapter-rules"]["data"]["config.yaml"]
    for metric in ("semsearch_batch_queue_depth", "semsearch_queue_to_compute_ratio"):
        assert f"as: {metric}" in rules


def test_gateway_replicas_keep_their_write_journal_and_scoped_keys() -> None:
    """Each replica's acknowledged writes outlive its pod (a volume of its own), and keys come
    from a file with scopes."""
    gateway = by_kind("StatefulSet")["semsearch-gateway"]
    spec = gateway["spec"]
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["data"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SEMSEARCH_WRITE_JOURNAL_DIR"].startswith("/data/")
    assert env["SEMSEARCH_FALLBACK_INDEX_DIR"].startswith("/data/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/data"
    assert env["SEMSEARCH_API_KEYS_FILE"].startswith(mounts["api-keys"])
    secret = by_kind("Secret")["semsearch-secrets"]["stringData"]
    assert "api-keys" in secret
    config = by_kind("ConfigMap")["semsearch-config"]["data"]
    assert config["SEMSEARCH_INDEX_BACKEND"] == "qdrant" and config["SEMSEARCH_REDIS_URL"]
    hpa = by_kind("HorizontalPodAutoscaler")["semsearch-gateway"]["spec"]["scaleTargetRef"]
    assert hpa["kind"] == "StatefulSet"


def test_qdrant_is_replicated_and_collections_are_sharded() -> None:
    qdrant = by_kind("StatefulSet")["semsearch-qdrant"]
    assert qdrant["spec"]["replicas"] == 3
    env = {
        e["name"]: e.get("value")
        for e in qdrant["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    config = by_kind("ConfigMap")["semsearch-config"]["data"]
    assert int(config["SEMSEARCH_QDRANT_SHARDS"]) >= 3
    assert int(config["SEMSEARCH_QDRANT_REPLICATION_FACTOR"]) == 2


def test_every_setting_the_manifests_set_exists() -> None:
    used: set[str] = set()
    for _, doc in k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            used |= semsearch_vars(doc.get("data") or doc.get("stringData") or {})
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                used |= semsearch_vars({e["name"]: 1 for e in container.get("env", [])})
    assert used <= settings_env_vars(), sorted(used - settings_env_vars())


@pytest.mark.parametrize(
    "dockerfile", sorted(p.name for p in (DEPLOY / "docker").glob("*.Dockerfile"))
)
def test_dockerfiles_pass_hadolint_run_as_non_root_and_carry_no_secrets(dockerfile: str) -> None:
    path = DEPLOY / "docker" / dockerfile
    result = subprocess.run(
        [str(BIN / "hadolint"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = path.read_text()
    assert "\nUSER 10001\n" in text
    assert text.count("FROM ") >= 2  # multi-stage: the build tools stay behind
    for secret in ("API_KEY", "PASSWORD", "TOKEN"):
        assert f"{secret}=" not in text


@pytest.mark.parametrize(
    ("image", "extras"), [("gateway", ["qdrant", "otel"]), ("model-service", ["models", "otel"])]
)
def test_the_image_locks_pin_every_dependency_pyproject_names(
    image: str, extras: list[str]
) -> None:
    """The images install the lock, then semsearch with --no-deps: a dependency added to
    pyproject.toml but not to the lock would be missing at run time (scripts/lock_images.sh)."""
    import re
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in extras:
        wanted += project["optional-dependencies"][extra]

    def name(requirement: str) -> str:
        found = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert found is not None
        return re.sub(r"[-_.]+", "-", found[0]).lower()

    lock = (DEPLOY / "docker" / f"{image}.lock.txt").read_text().splitlines()
    locked = {name(line) for line in lock if line and not line.startswith("#")}
    locked.add("torch")  # installed by the Dockerfile itself, from its own index
    assert {name(r) for r in wanted} - locked == set()


def test_the_gateway_image_carries_no_torch() -> None:
    lock = (DEPLOY / "docker" / "gateway.lock.txt").read_text().lower()
    for heavy in ("torch", "sentence-transformers", "transformers=="):
        assert heavy not in lock
    assert "torch" in (DEPLOY / "docker" / "model-service.Dockerfile").read_text()


def test_qdrant_server_has_collection_metadata_and_matches_the_locked_client() -> None:
    """semsearch keeps its generation in collection metadata (Qdrant >= 1.16), and
    qdrant-client refuses servers more than one minor version away from its own."""
    import re

    locked = (DEPLOY / "docker" / "gateway.lock.txt").read_text()
    client = re.search(r"^qdrant-client==(\d+)\.(\d+)\.", locked, re.M)
    assert client is not None
    client_minor = (int(client[1]), int(client[2]))
    images = [
        container["image"]
        for _, doc in k8s_documents()
        if doc["kind"] == "StatefulSet"
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container["image"].startswith("qdrant/")
    ]
    assert images, "the k8s manifests run Qdrant"
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yml").read_text())
    images.append(compose["services"]["qdrant"]["image"])
    for image in images:
        version = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.\d+", image)
        assert version is not None, image
        server = (int(version[1]), int(version[2]))
        assert server >= (1, 16), image
        assert server[0] == client_minor[0] and abs(server[1] - client_minor[1]) <= 1, image
