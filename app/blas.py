"""numpy's BLAS in a serving process: one thread.

numpy's wheels bundle OpenBLAS built with its own pthreads pool. After a call that it split
across threads (a query's product with a few thousand vectors is enough), the pool's threads
keep spinning for a while before they sleep (OpenBLAS's THREAD_TIMEOUT), and on a small
machine they spin on the cores the model's threads need next. Measured in the gateway's
pipeline on a 2-core host (SciFact, in-process embedder, p50 of 75): the embedding of the
search after a filtered search took 33.2 ms with numpy's two threads, 27.9 ms with one (24.1
ms after an unfiltered search); after a bare query-by-5k-vectors product, the same kind of
work, 35.0 ms against 28.9. With `SentenceTransformer.encode` called right after such a
product the embedding took 2-7 times as long as without it.

What numpy multiplies in a serving process is a query's (the exact search of a filtered flat
collection: ~1 ms for 10k x 384 on one thread; IVF-PQ's re-scoring), where one thread costs
least overall; the fusion calibration of a publish (a query at a time against a sample)
runs in the background. Evaluation runs in a process of its own, with numpy's default.
FAISS's and torch's own BLAS and OpenMP pools are other libraries, left as they are.
"""

from __future__ import annotations

from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def use_one_numpy_blas_thread() -> int:
    """Limit the BLAS library that numpy bundles (its `numpy.libs` folder) to one thread.
    Returns how many libraries were limited: 0 where numpy uses another BLAS (a conda MKL
    build, an Accelerate build), which is left as it is."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    bundled = [
        lib.filepath
        for lib in controller.lib_controllers
        if lib.user_api == "blas" and Path(lib.filepath).parent.name == "numpy.libs"
    ]
    if bundled:
        controller.select(filepath=bundled).limit(limits=1)
    log.debug("numpy_blas_threads", limited=bundled)
    return len(bundled)
