"""API keys for the gateway: stored as SHA-256 digests, checked in constant time, each with a
token-bucket rate limit and a scope. A key never reaches a log line; only its short id (a
digest prefix) does.

Scopes are levels: `read` (search, list and look at collections, documents and writes),
`write` (also write and delete documents), `admin` (also create and delete collections). A key
may be limited to named collections. In a keys file a line is

    <key or sha256:digest>  [read|write|admin]  [collection,collection,... | *]

and a key alone (every key in SEMSEARCH_API_KEYS) is `write` on every collection, which is
what keys could do before scopes existed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import IntEnum

from app import metrics
from app.config import GatewaySettings
from app.errors import Forbidden, Overloaded, SemsearchError, Unauthorized
from app.types import Clock

DIGEST_PREFIX = "sha256:"
# Values that mean "someone forgot to set a real key": refused outside development.
PLACEHOLDERS = {"change-me", "changeme", "secret", "password", "example", "test", "dev-key"}


def digest(key: str) -> str:
    """`sha256:<hex>` of a key: what settings and key files should hold."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


class Scope(IntEnum):
    """What a key may do; each level includes the ones below."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True)
class Grant:
    """What one key may do: its scope, on which collections (None: all)."""

    key_id: str  # a digest prefix, safe to log
    scope: Scope
    collections: frozenset[str] | None = None

    def check(self, needed: Scope, collection: str | None = None) -> None:
        """Raises Forbidden unless this key has `needed` (on `collection`, when named)."""
        if self.scope < needed:
            raise Forbidden(
                f"this API key has the {self.scope.name.lower()} scope; this needs "
                f"{needed.name.lower()}"
            )
        if collection is not None and not self.allows(collection):
            raise Forbidden(
                f"this API key may not use collection {collection!r}", field="collection"
            )

    def allows(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


# With no keys configured, auth is off: everyone may do everything.
OPEN = Grant("-", Scope.ADMIN)
DEFAULT_SCOPE = Scope.WRITE  # a key with no scope: what keys could do before scopes existed


def parse_key_line(line: str) -> tuple[str, Scope, frozenset[str] | None]:
    """(key or digest, scope, collections) of one keys-file line.

    Raises:
        SemsearchError: an unknown scope.
    """
    parts = line.split()
    scope = DEFAULT_SCOPE
    collections: frozenset[str] | None = None
    if len(parts) > 1:
        try:
            scope = Scope[parts[1].upper()]
        except KeyError:
            raise SemsearchError(
                f"API keys file: unknown scope {parts[1]!r} (read, write or admin)"
            ) from None
    if len(parts) > 2 and parts[2] != "*":
        collections = frozenset(c for c in parts[2].split(",") if c)
    if len(parts) > 3:
        raise SemsearchError(
            "API keys file: a line is `<key> [scope] [collections]`; got more fields"
        )
    return parts[0], scope, collections


@dataclass
class _Bucket:
    tokens: float
    updated: float


class ApiKeys:
    """The set of accepted keys (by digest), their grants, and one token bucket per key."""

    def __init__(
        self,
        digests: set[str] | dict[str, Grant],
        rate_per_s: float,
        burst: int,
        clock: Clock = time.monotonic,
    ) -> None:
        if not isinstance(digests, dict):
            digests = {d: Grant(_key_id(d), DEFAULT_SCOPE) for d in digests}
        self._grants = digests
        self._digests = set(digests)
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
        entries: list[tuple[str, Scope, frozenset[str] | None]] = [
            (key, DEFAULT_SCOPE, None) for key in settings.api_keys
        ]
        if settings.api_keys_file is not None:
            try:
                lines = settings.api_keys_file.read_text().splitlines()
            except OSError as exc:
                raise SemsearchError(f"cannot read SEMSEARCH_API_KEYS_FILE: {exc}") from exc
            entries += [
                parse_key_line(line)
                for line in lines
                if line.strip() and not line.lstrip().startswith("#")
            ]
        grants: dict[str, Grant] = {}
        for entry, scope, collections in entries:
            if entry.startswith(DIGEST_PREFIX):
                key = entry.lower()
            elif settings.environment == "production" and entry.lower() in PLACEHOLDERS:
                raise SemsearchError(
                    "a placeholder API key is configured; set real keys (or their sha256: "
                    "digests) in SEMSEARCH_API_KEYS / SEMSEARCH_API_KEYS_FILE"
                )
            else:
                key = digest(entry)
            grants[key] = Grant(_key_id(key), scope, collections)
        return cls(grants, settings.rate_limit_per_s, settings.rate_limit_burst, clock)

    def check(self, presented: str | None) -> str:
        """The key's id (a digest prefix, safe to log) when it is valid and within its rate.

        Raises:
            Unauthorized: no key, or not a known one.
            Overloaded: the key spent its rate (Retry-After says when a token is back).
        """
        return self.grant(presented).key_id

    def grant(self, presented: str | None) -> Grant:
        """What the key may do, when it is valid and within its rate (see `check`)."""
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
        return self._grants[matched[0]]

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


def _key_id(key_digest: str) -> str:
    return key_digest[len(DIGEST_PREFIX) : len(DIGEST_PREFIX) + 8]


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None
