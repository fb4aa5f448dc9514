"""The collections a gateway serves, opened once and kept current as generations are published."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app import metrics
from app.errors import NotFound
from app.index import VectorIndex
from app.index.faiss_index import FaissIndex
from app.index.generations import CollectionLayout, validate_collection_name
from app.logs import get_logger

log = get_logger(__name__)


class Collections:
    """Name -> open `VectorIndex`. Collections created after start are found on first use."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self._open: dict[str, VectorIndex] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        if not self.index_dir.is_dir():
            log.warning(
                "index_dir_missing",
                index_dir=str(self.index_dir),
                hint="run `semsearch index PATH --collection NAME` first",
            )
            return
        for child in sorted(self.index_dir.iterdir()):
            if child.is_dir() and CollectionLayout(self.index_dir, child.name).exists():
                await self.get(child.name)

    async def get(self, name: str) -> VectorIndex:
        """The open collection `name`.

        Raises:
            InvalidInput: `name` is not a valid collection name.
            NotFound: no such collection.
        """
        index = self._open.get(name)
        if index is not None:
            return index
        validate_collection_name(name)
        async with self._lock:
            if name not in self._open:
                try:
                    self._open[name] = await FaissIndex.open(self.index_dir, name)
                except NotFound:
                    known = ", ".join(sorted(self._open)) or "none yet"
                    raise NotFound(
                        f"collection {name!r} does not exist (known: {known})", field="collection"
                    ) from None
                await self._observe(self._open[name])
            return self._open[name]

    async def reload(self) -> list[str]:
        """Pick up newly published generations; returns the collections that changed."""
        changed = []
        for name, index in list(self._open.items()):
            try:
                if await index.reload():
                    changed.append(name)
                    await self._observe(index)
            except Exception as exc:  # a half-deleted directory must not stop the others
                log.error("generation_reload_failed", collection=name, error=repr(exc))
        return changed

    def names(self) -> list[str]:
        return sorted(self._open)

    def status(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "backend": index.backend,
                "generation": index.generation,
                "model": index.model_id,
            }
            for name, index in sorted(self._open.items())
        }

    async def close(self) -> None:
        for index in self._open.values():
            await index.close()
        self._open.clear()

    @staticmethod
    async def _observe(index: VectorIndex) -> None:
        metrics.INDEX_GENERATION.labels(index.collection).set(index.generation)
        metrics.INDEX_DOCUMENTS.labels(index.collection).set(await index.count())
