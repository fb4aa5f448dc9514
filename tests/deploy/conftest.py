"""Helpers for checking the deployment files without a Docker engine or a cluster."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution, done before parsing."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op is None or not op.startswith(":")):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VARIABLE.sub(substitute, text)


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!reset` tag (an override that removes a key)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"!reset": True})


def load_compose(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    text = interpolate((COMPOSE / name).read_text(), env if env is not None else env_example())
    loaded: dict[str, Any] = yaml.load(text, Loader=_ComposeLoader)
    return loaded


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def settings_env_vars() -> set[str]:
    from app.config import env_var_table

    return {env for rows in env_var_table().values() for env, _, _ in rows}


def semsearch_vars(mapping: dict[str, Any]) -> set[str]:
    return {k for k in mapping if k.startswith("SEMSEARCH_")}


__all__ = ["COMPOSE", "DEPLOY", "K8S", "os"]
