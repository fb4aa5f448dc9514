"""Queue and compute time of the batched work done for one request: the model services
answer them as TEI's `x-queue-time` / `x-compute-time` headers, and traces carry them."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class RequestTiming:
    queue_s: float = 0.0
    compute_s: float = 0.0


# Set per request by the services' middleware; the batch queue adds to it.
request_timing: ContextVar[RequestTiming | None] = ContextVar("request_timing", default=None)
