"""What every process reads: log settings and the request size, from `SEMSEARCH_*` whatever
the service's own prefix."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def shared_field(name: str, default: object, description: str) -> Any:
    """A field every service reads from the same variable, whatever its own prefix."""
    env = f"SEMSEARCH_{name.upper()}"
    return Field(default, validation_alias=AliasChoices(env, name), description=description)


class ServiceSettings(BaseSettings):
    """Fields common to every process."""

    model_config = SettingsConfigDict(
        env_prefix="SEMSEARCH_", extra="ignore", populate_by_name=True, frozen=True
    )

    log_level: Literal["debug", "info", "warning", "error"] = shared_field(
        "log_level", "info", "Log level of every semsearch process."
    )
    log_format: Literal["json", "console"] = shared_field(
        "log_format", "json", "`json` (structlog JSON lines) or `console` for humans."
    )
    max_request_bytes: int = shared_field(
        "max_request_bytes", 8 * 1024 * 1024, "Largest request body accepted (413 above)."
    )
