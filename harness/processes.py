"""Start services as real processes on loopback ports and stop them (benchmarks and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Settings every child gets unless `child_env` is given others: the test suite keeps its
# model services off ONNX Runtime here (tests/conftest.py).
CHILD_DEFAULTS: dict[str, str] = {}


def child_env(**settings: str) -> dict[str, str]:
    """The current environment without SEMSEARCH_* settings, offline, plus CHILD_DEFAULTS and
    `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(HF_HUB_OFFLINE="1", SEMSEARCH_LOG_FORMAT="json", **CHILD_DEFAULTS, **settings)
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
    ready_path: str = "/ready",
    timeout_s: float = 180.0,
) -> Service:
    """Start `command`, wait until `ready_path` answers 200; the log goes to log_dir/name.log."""
    log = log_dir / f"{name}.log"
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    service = Service(name, f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{service.logs()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{name} not ready after {timeout_s}s:\n{service.logs()[-3000:]}"
                )
            try:
                if httpx.get(service.url + ready_path, timeout=2).status_code == 200:
                    return service
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    except BaseException:
        service.stop()
        raise
