"""Real processes: the CLI builds an index with the real model; services run under uvicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATA, ROOT, free_port, wait_for_port

SEMSEARCH = str(Path(sys.executable).with_name("semsearch"))


def child_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(HF_HUB_OFFLINE="1", SEMSEARCH_LOG_FORMAT="json", **settings)
    return env


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_service(
    name: str,
    command: list[str],
    port: int,
    env: dict[str, str],
    log_dir: Path,
    ready_timeout_s: float = 120.0,
) -> Service:
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    service = Service(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for_port(port, ready_timeout_s, proc)
        deadline = time.monotonic() + ready_timeout_s
        while httpx.get(f"{service.url}/ready", timeout=5).status_code != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} never became ready:\n{service.logs()[-3000:]}")
            time.sleep(0.1)
    except BaseException:
        service.stop()
        raise
    return service


@pytest.fixture(scope="session")
def real_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/corpus.jsonl indexed by `semsearch index` with the real all-MiniLM-L6-v2."""
    index_dir = tmp_path_factory.mktemp("real-index")
    result = subprocess.run(
        [
            SEMSEARCH,
            "index",
            str(DATA / "corpus.jsonl"),
            "--collection",
            "default",
            "--index-dir",
            str(index_dir),
        ],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "added" in result.stdout
    assert "300" in result.stdout
    return index_dir


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Collects started services and stops them all at the end of the test."""
    started: list[Service] = []
    yield started
    for service in reversed(started):
        service.stop()


__all__ = ["SEMSEARCH", "Service", "child_env", "free_port", "start_service"]
