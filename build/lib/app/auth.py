"""API keys for the gateway: stored as SHA-256 digests, checked in constant time, each with a
token-bucket rate limit. A key never reaches a log line; only its short id (a digest prefix)
does."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from app import metrics
from app.config import GatewaySettings
from app.errors import Overloaded, SemsearchError, Unauthorized
from app.resilience import Clock

DIGEST_PREFIX = "sha256:"
# Values that mean "someone forgot to set a real key": refused outside development.
PLACEHOLDERS = {"change-me", "changeme", "secret", "password", "example", "test", "dev-key"}


def digest(key: str) -> str:
    """`sha256:<hex>` of a key: what settings and key files should hold."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ApiKeys:
    """The set of accepted keys (by digest) and one token bucket per key."""

    def __init__(
        self, digests: set[str], rate_per_s: float, burst: int, clock: Clock = time.monotonic
    ) -> None:
        self._digests = digests
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @classmethod
    def from_settings(cls, settings: GatewaySettings, clock: Clock = time.monotonic) -> ApiKeys:
        """Keys from `api_keys` and `api_keys_file`, plain or as digests.

        Raises:
            SemsearchError: a placeholder key in production, or an unreadable key file.
        """
        entries = list(settings.api_keys)
        if settings.api_keys_file is not None:
            try:
                lines = settings.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise SemsearchError(f"cannot read SEMSEARCH_API_KEYS_FILE: {exc}") from exc
            entries += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        digests = set()
        for entry in entries:
            if entry.startswith(DIGEST_PREFIX):
                digests.add(entry.lower())
                continue
            if settings.environment == "production" and entry.lower() in PLACEHOLDERS:
                raise SemsearchError(
                    "a placeholder API key is configured; set real keys (or their sha256: "
                    "digests) in SEMSEARCH_API_KEYS / SEMSEARCH_API_KEYS_FILE"
                )
            digests.add(digest(entry))
        return cls(digests, settings.rate_limit_per_s, settings.rate_limit_burst, clock)

    def check(self, presented: str | None) -> str:
        """The key's id (a digest prefix, safe to log) when it is valid and within its rate.

        Raises:
            Unauthorized: no key, or not a known one.
            Overloaded: the key spent its rate (Retry-After says when a token is back).
        """
        if not presented:
            metrics.AUTH_FAILURES.inc()
            raise Unauthorized(
                "an API key is required: `Authorization: Bearer <key>` or `X-API-Key`"
            )
        candidate = digest(presented)
        # compare against every digest: time does not depend on which one (or whether) matched
        matched = [d for d in self._digests if hmac.compare_digest(d, candidate)]
        if not matched:
            metrics.AUTH_FAILURES.inc()
            raise Unauthorized("unknown API key")
        self._spend(candidate)
        return candidate[len(DIGEST_PREFIX) : len(DIGEST_PREFIX) + 8]

    def _spend(self, key: str) -> None:
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(float(self._burst), now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1:
            metrics.SHED_REQUESTS.labels("rate_limit").inc()
            raise Overloaded(
                "rate limit of this API key reached",
                retry_after_s=(1 - bucket.tokens) / self._rate,
            )
        bucket.tokens -= 1


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None
