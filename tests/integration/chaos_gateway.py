"""A real gateway process whose primary index fails while a marker file exists.

Test code only (fault injection for tests/integration/test_resilience.py): the gateway, its
FallbackIndex and everything else are the production code, started from the environment.

    CHAOS_INDEX_FAULT_FILE=/tmp/x python tests/integration/chaos_gateway.py PORT
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from app.assembly import build_pipeline
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import IndexUnavailable
from app.index.base import AnnResult, VectorIndex
from app.index.fallback import FallbackIndex
from app.logs import configure_logging
from app.types import Filter, FloatArray
from services.gateway.main import create_app

FAULT = Path(os.environ["CHAOS_INDEX_FAULT_FILE"])


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, settings.log_format, "gateway")
    pipeline = build_pipeline(settings, EmbedderSettings(), RerankerSettings())
    open_index = pipeline.collections._opener

    async def open_with_fault(name: str) -> VectorIndex:
        index = await open_index(name)
        assert isinstance(index, FallbackIndex), "set SEMSEARCH_FALLBACK_INDEX_DIR"
        healthy, healthy_words = index.primary.search, index.primary.lexical_search

        async def search(vectors: FloatArray, k: int, filter: Filter | None = None) -> AnnResult:
            if FAULT.exists():
                raise IndexUnavailable("injected fault: the primary index is down")
            return await healthy(vectors, k, filter)

        async def words(texts: Sequence[str], k: int, filter: Filter | None = None) -> AnnResult:
            if FAULT.exists():
                raise IndexUnavailable("injected fault: the primary index is down")
            return await healthy_words(texts, k, filter)

        index.primary.search = search  # type: ignore[method-assign]
        index.primary.lexical_search = words  # type: ignore[method-assign]
        return index

    pipeline.collections._opener = open_with_fault
    uvicorn.run(
        create_app(settings, pipeline),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
