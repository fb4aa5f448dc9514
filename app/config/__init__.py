"""Settings: one pydantic-settings class per service, each with its own env prefix.

The embedder and reranker services read ``SEMSEARCH_EMBEDDER_*`` / ``SEMSEARCH_RERANKER_*``;
the gateway (and the indexing CLI, which writes where the gateway reads) reads ``SEMSEARCH_*``.
The embedded default builds the in-process models from the same model settings the services
use, so ``SEMSEARCH_EMBEDDER_MODEL`` means the same thing everywhere.
"""

from __future__ import annotations

from pydantic import AliasChoices

from app.config.common import ServiceSettings
from app.config.gateway import GatewaySettings
from app.config.models import (
    DEFAULT_EMBEDDER_MODEL,
    DEFAULT_RERANKER_MODEL,
    EmbedderSettings,
    ModelSettings,
    RerankerSettings,
)

__all__ = [
    "DEFAULT_EMBEDDER_MODEL",
    "DEFAULT_RERANKER_MODEL",
    "EmbedderSettings",
    "GatewaySettings",
    "ModelSettings",
    "RerankerSettings",
    "ServiceSettings",
    "env_var_table",
]


def env_var_table() -> dict[str, list[tuple[str, str, str]]]:
    """Every setting as (variable, default, meaning), by the process that reads it. The
    README's configuration tables are printed from this (scripts/settings_table.py) and a test
    checks the README still lists every variable."""
    sections: dict[str, list[tuple[str, str, str]]] = {}
    seen: set[str] = set()
    for title, cls in (
        ("Every process", ServiceSettings),
        ("Gateway (and `semsearch index`, which writes where the gateway reads)", GatewaySettings),
        ("Embedder service, and the gateway's in-process embedder", EmbedderSettings),
        ("Reranker service, and the gateway's in-process reranker", RerankerSettings),
    ):
        prefix = cls.model_config.get("env_prefix", "")
        rows = sections.setdefault(title, [])
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            env = (
                str(alias.choices[0]) if isinstance(alias, AliasChoices) else prefix + name
            ).upper()
            if env in seen:
                continue
            seen.add(env)
            default = field.get_default(call_default_factory=True)
            unset = default is None or default == []
            shown = "(unset)" if unset else f"`{default}`" if default != "" else '`""`'
            rows.append((env, shown, field.description or ""))
    return sections
