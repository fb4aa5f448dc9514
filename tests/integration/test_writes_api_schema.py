"""schemathesis against the write routes of a real gateway process, auth on (an admin key):
every check (server errors, status codes, response schemas and headers, negative and
positive data, resources after deletion) finds nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.auth import digest
from harness.processes import child_env, free_port, start_service
from tests.integration.conftest import SEMSEARCH

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_schemathesis_finds_nothing_on_the_write_routes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{digest('schema-admin')} admin\n")
    port = free_port()
    env = child_env(
        SEMSEARCH_EMBEDDER_BACKEND="fake",
        SEMSEARCH_RERANKER_BACKEND="fake",
        SEMSEARCH_INDEX_DIR=str(tmp_path / "index"),
        SEMSEARCH_API_KEYS_FILE=str(keys),
        SEMSEARCH_REFRESH_INTERVAL_S="0.2",
        SEMSEARCH_WRITE_TIMEOUT_MS="2000",
        SEMSEARCH_LOG_LEVEL="warning",
    )
    gateway = start_service(
        "gateway",
        [SEMSEARCH, "serve", "gateway", "--port", str(port)],
        port,
        env,
        tmp_path,
        ready_path="/health",
    )
    try:
        tool = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [
                str(tool),
                "run",
                f"{gateway.url}/openapi.json",
                "--include-path-regex",
                "^/v1/collections/",
                "--checks",
                "all",
                "--header",
                "Authorization: Bearer schema-admin",
                "--max-examples",
                "40",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,  # schemathesis keeps a cache in its working directory
        )
    finally:
        gateway.stop()
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "unhandled_error" not in gateway.logs(), gateway.logs()[-3000:]
