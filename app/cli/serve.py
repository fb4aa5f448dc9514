"""`semsearch serve` and `semsearch hash-key`: running the services."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from app.cli.common import cli, console
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings


class Service(StrEnum):
    embedder = "embedder"
    reranker = "reranker"
    gateway = "gateway"


SERVICE_SETTINGS: dict[Service, type[EmbedderSettings | RerankerSettings | GatewaySettings]] = {
    Service.embedder: EmbedderSettings,
    Service.reranker: RerankerSettings,
    Service.gateway: GatewaySettings,
}


@cli.command()
def serve(
    service: Annotated[Service, typer.Argument(help="Which service to run.")],
    host: Annotated[str | None, typer.Option(help="Bind address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from settings).")] = None,
) -> None:
    """Run one service with uvicorn. With no model-service URLs set, the gateway runs both
    models in-process (the embedded default)."""
    import uvicorn

    settings = SERVICE_SETTINGS[service]()
    # By name, as `uvicorn services.gateway.main:app` does: the services import this library,
    # never the other way round. The app builds itself (and its logging) from the settings.
    uvicorn.run(
        f"services.{service.value}.main:app",
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,
    )


@cli.command("hash-key")
def hash_key(
    key: Annotated[
        str | None, typer.Argument(help="The key; a new random one when omitted.")
    ] = None,
) -> None:
    """Print an API key's `sha256:` digest, for SEMSEARCH_API_KEYS or a keys file."""
    import secrets

    from app.auth import digest

    if key is None:
        key = secrets.token_urlsafe(32)
        console.print(f"key:    {key}")
    console.print(f"digest: {digest(key)}")
