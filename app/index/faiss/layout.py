"""On-disk layout of a collection and the atomic publication of generations.

    <index_dir>/<collection>/
        collection.json           model id and dimension, fixed at creation
        store.sqlite              staged documents with vectors (the source of truth)
        CURRENT                   name of the generation searches use; replaced atomically
        generations/gen-000007/   immutable once renamed into place:
            index.faiss, docs.sqlite, manifest.json

A generation is written under a temporary name, fsynced, renamed into place, and only then
named in CURRENT (write to CURRENT.tmp, fsync, rename). A crash at any step leaves the
previous generation serving.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from app.errors import Conflict, InvalidInput

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEEP_GENERATIONS = 3  # older ones are pruned; a few stay for in-flight readers and rollback


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model_id: str
    dimension: int
    backend: str
    created_at: float
    # Who this collection is: a collection deleted and created again under the same name is
    # another one (its generations restart at 1), and caches and gateways must tell them apart.
    uid: str = ""

    @property
    def identity(self) -> str:
        """`uid`, or for a collection created before identities existed, one derived from its
        name and creation time (stable, and different for a re-created one)."""
        if self.uid:
            return self.uid
        return (
            "legacy-" + hashlib.sha256(f"{self.name}:{self.created_at}".encode()).hexdigest()[:16]
        )


def new_uid() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Manifest:
    generation: int
    count: int
    store_version: int
    index_type: str
    index_params: dict[str, int]
    created_at: float
    build_seconds: float
    lexical: bool = False  # has a lexical index (generations before lexical search do not)
    calibration: dict[str, Any] | None = None  # the fusion weight chosen for it (types.Calibration)


class WriterBusy(Conflict):
    """Another process holds the collection's writer lock (409 over HTTP)."""


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.fullmatch(name):
        raise InvalidInput(
            "collection names are 1-64 characters of letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit; got {name!r}",
            field="collection",
        )
    return name


def generation_dirname(number: int) -> str:
    return f"gen-{number:06d}"


class CollectionLayout:
    """Paths and atomic file operations for one collection directory."""

    def __init__(self, index_dir: Path, name: str) -> None:
        self.name = validate_collection_name(name)
        self.root = index_dir / name

    @property
    def info_path(self) -> Path:
        return self.root / "collection.json"

    @property
    def store_path(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def current_path(self) -> Path:
        return self.root / "CURRENT"

    @property
    def generations_dir(self) -> Path:
        return self.root / "generations"

    def exists(self) -> bool:
        return self.info_path.is_file()

    def read_info(self) -> CollectionInfo:
        return CollectionInfo(**json.loads(self.info_path.read_text()))

    def create(
        self, model_id: str, dimension: int, backend: str, uid: str | None = None
    ) -> CollectionInfo:
        self.generations_dir.mkdir(parents=True, exist_ok=True)
        info = CollectionInfo(
            self.name, model_id, dimension, backend, time.time(), uid or new_uid()
        )
        atomic_write_text(self.info_path, json.dumps(asdict(info), indent=2))
        return info

    def current_generation(self) -> int:
        """The published generation number, 0 when nothing was published yet."""
        try:
            name = self.current_path.read_text().strip()
        except FileNotFoundError:
            return 0
        return int(name.removeprefix("gen-"))

    def generation_path(self, number: int) -> Path:
        return self.generations_dir / generation_dirname(number)

    def read_manifest(self, number: int) -> Manifest:
        return Manifest(**json.loads((self.generation_path(number) / "manifest.json").read_text()))

    def staging_path(self, number: int) -> Path:
        path = self.generations_dir / f".tmp-{generation_dirname(number)}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit_generation(self, staging: Path, manifest: Manifest) -> None:
        """Seal a fully written staging directory and point CURRENT at it."""
        atomic_write_text(staging / "manifest.json", json.dumps(asdict(manifest), indent=2))
        for folder, _, files in os.walk(staging):  # the lexical index is a folder of its own
            for name in files:
                _fsync_file(Path(folder) / name)
            _fsync_dir(Path(folder))
        final = self.generation_path(manifest.generation)
        os.rename(staging, final)
        _fsync_dir(self.generations_dir)
        atomic_write_text(self.current_path, generation_dirname(manifest.generation) + "\n")

    def remove(self) -> None:
        """Delete the whole collection: renamed away first (so no reader finds half of it,
        and a collection created again under the name starts clean), then removed."""
        if not self.root.exists():
            return
        trash = self.root.with_name(f".deleted-{self.name}-{new_uid()}")
        os.rename(self.root, trash)
        _fsync_dir(self.root.parent)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self) -> None:
        """Drop generations beyond the newest few and staging dirs left by crashed runs."""
        current = self.current_generation()
        numbered = sorted(
            int(p.name.removeprefix("gen-"))
            for p in self.generations_dir.glob("gen-*")
            if p.name.removeprefix("gen-").isdigit()
        )
        for number in numbered[:-KEEP_GENERATIONS]:
            if number != current:
                shutil.rmtree(self.generation_path(number), ignore_errors=True)
        for stale in self.generations_dir.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    @contextmanager
    def writer_lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """One writer per collection at a time, across processes; waits up to `wait_s` for
        another writer to finish."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as handle, self._flock(handle, fcntl.LOCK_EX, wait_s):
            yield

    @contextmanager
    def reader_lock(self) -> Iterator[None]:
        """Keep writers out while the staged store is read, creating nothing (a collection
        that was never written has no lock file, and nothing staged to protect)."""
        path = self.root / ".lock"
        if not path.exists():  # writers create it (and never remove it)
            yield
            return
        with open(path) as handle, self._flock(handle, fcntl.LOCK_SH):
            yield

    @contextmanager
    def _flock(self, handle: IO[str], mode: int, wait_s: float = 0.0) -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    raise WriterBusy(
                        f"collection {self.name!r} is being written by another process"
                    ) from exc
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name, fsync, then rename over `path`: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
