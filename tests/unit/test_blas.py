"""numpy's bundled BLAS runs one thread in a serving process (see app/blas.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
import numpy
from threadpoolctl import threadpool_info
def numpy_blas():
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "numpy.libs" in lib["filepath"]]
before = numpy_blas()
import services.gateway.main as gateway
gateway.app  # built from the environment, as `semsearch serve` and uvicorn build it
after = numpy_blas()
from app.blas import use_one_numpy_blas_thread
print(json.dumps({"before": before, "after": after, "found": use_one_numpy_blas_thread()}))
"""


def test_the_served_app_limits_numpys_bundled_blas_to_one_thread() -> None:
    # a process of its own: the limit is process-wide
    env = {
        "SEMSEARCH_EMBEDDER_URL": "http://127.0.0.1:9",
        "SEMSEARCH_LOG_LEVEL": "warning",
        "OPENBLAS_NUM_THREADS": "2",  # numpy's pool as big as it gets here (capped at the CPUs)
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=True,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["before"] and found["found"] == len(found["before"]), "numpy bundles OpenBLAS"
    assert found["after"] == [1] * len(found["before"])
    if len(os.sched_getaffinity(0)) > 1:  # where one thread is not numpy's default anyway
        assert max(found["before"]) > 1
