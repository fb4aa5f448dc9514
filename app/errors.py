"""The one exception tree of semsearch and the one table that maps it to HTTP.

Every layer raises these; only the services' error handler turns them into responses,
always in the shape ``{"error": {"type": ..., "message": ..., "field": ...}}``.
"""

from __future__ import annotations


class SemsearchError(Exception):
    """Base of every error semsearch raises on purpose."""

    type: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(SemsearchError):
    """The request is well-formed JSON but a value is unacceptable (422)."""

    type = "invalid_request"


class InputTooLong(InvalidInput):
    """An input exceeds the model window and the caller did not ask for truncation (422)."""

    type = "input_too_long"


class PayloadTooLarge(SemsearchError):
    """Too many items, too many characters or too many bytes in one request (413)."""

    type = "payload_too_large"


class NotFound(SemsearchError):
    """A named thing (collection, route) does not exist (404)."""

    type = "not_found"


class ModelNotFound(NotFound):
    """A request names a model this service does not serve (404, as OpenAI and vLLM answer)."""

    type = "model_not_found"


class Unauthorized(SemsearchError):
    """Missing or invalid API key (401)."""

    type = "unauthorized"


class Forbidden(SemsearchError):
    """A valid API key without the scope (or the collection) the request needs (403)."""

    type = "forbidden"


class Conflict(SemsearchError):
    """The request contradicts what exists: a collection created with other options, or
    held by another writer (409)."""

    type = "conflict"


class RetryableError(SemsearchError):
    """An error after which the same request may succeed later; carries Retry-After."""

    def __init__(
        self, message: str, *, retry_after_s: float = 1.0, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class Overloaded(RetryableError):
    """Capacity is exhausted right now; refused before any work was queued (429)."""

    type = "overloaded"


class Unavailable(RetryableError):
    """A component needed for the answer is down or not loaded (503)."""

    type = "unavailable"


class EmbedderUnavailable(Unavailable):
    """No query vector can be made, so no search is possible (503)."""

    type = "embedder_unavailable"


class RerankerUnavailable(Unavailable):
    """The reranker cannot score; the gateway degrades to ANN order instead of failing."""

    type = "reranker_unavailable"


class IndexUnavailable(Unavailable):
    """The vector index cannot be searched (503 when no fallback index answers either)."""

    type = "index_unavailable"


class CircuitOpen(Unavailable):
    """A circuit breaker is open; the call was not attempted (503)."""

    type = "circuit_open"


class DeadlineExceeded(SemsearchError):
    """The request's time budget ran out before an answer could be made (504)."""

    type = "deadline_exceeded"


class ClientDisconnected(SemsearchError):
    """The client went away before the answer; nobody reads the response (499, as nginx)."""

    type = "client_disconnected"


class ModelFailure(SemsearchError):
    """The model raised on a batch (e.g. a CUDA fault): a server fault, not bad input (500)."""

    type = "model_failed"


class BudgetExhausted(DeadlineExceeded):
    """A call was cut short by the request's own deadline: not the dependency's fault."""


class UpstreamError(SemsearchError):
    """A model service answered with something we cannot use (502)."""

    type = "upstream_error"


# The single table from exception to HTTP status. Most specific classes first: the first
# isinstance match wins.
HTTP_STATUS: tuple[tuple[type[SemsearchError], int], ...] = (
    (InvalidInput, 422),
    (PayloadTooLarge, 413),
    (NotFound, 404),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Conflict, 409),
    (Overloaded, 429),
    (Unavailable, 503),
    (DeadlineExceeded, 504),
    (UpstreamError, 502),
    (ClientDisconnected, 499),
    (SemsearchError, 500),
)


def http_status(error: SemsearchError) -> int:
    """The HTTP status for an error, from the table above."""
    for cls, status in HTTP_STATUS:
        if isinstance(error, cls):
            return status
    return 500


def error_body(error_type: str, message: str, field: str | None = None) -> dict[str, object]:
    """The one JSON error shape, for both our errors and framework errors."""
    body: dict[str, object] = {"type": error_type, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


def error_for_status(status: int, error_type: str, message: str) -> SemsearchError:
    """Rebuild our exception from a remote service's error response (used by the clients)."""
    for cls, code in HTTP_STATUS:
        if code == status and cls is not SemsearchError:
            if cls is InvalidInput and error_type == InputTooLong.type:
                return InputTooLong(message)
            return cls(message)
    return UpstreamError(f"upstream answered {status} ({error_type}): {message}")
