"""What a valid search is: the query text normalized once, every value in range, the filter
in the one shape both index backends understand. Checked before any work is done (422)."""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from dataclasses import dataclass

from app.config import GatewaySettings
from app.errors import InvalidInput
from app.types import Filter, SearchQuery, lone_surrogate_at

# Top-level metadata fields only: no dots, which Qdrant reads as a path into nested objects
# and SQLite's JSON functions would read as a literal key -- the backends would disagree.
FILTER_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
MAX_FILTER_CONDITIONS = 16
MAX_FILTER_VALUES = 1024


@dataclass(frozen=True)
class QueryLimits:
    """The bounds a search request must keep (from the gateway's settings)."""

    max_query_chars: int
    max_top_k: int
    max_candidates: int
    min_timeout_ms: int
    max_timeout_ms: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> QueryLimits:
        return cls(
            max_query_chars=settings.max_query_chars,
            max_top_k=settings.max_top_k,
            max_candidates=settings.max_candidates,
            min_timeout_ms=settings.min_timeout_ms,
            max_timeout_ms=settings.max_timeout_ms,
        )


def normalize_query(query: str) -> str:
    """NFKC and collapsed whitespace: equal queries must share a cache key *and* an embedding.

    Case is kept: a cased model embeds "US" and "us" differently.
    """
    return " ".join(unicodedata.normalize("NFKC", query).split())


def check_query(query: SearchQuery, limits: QueryLimits) -> SearchQuery:
    """`query` with its text normalized, once every value is known to be in range.

    Raises:
        InvalidInput: a value is out of range, or the filter is not of the accepted shape.
    """
    # The limit holds for what gets embedded: NFKC can make one character many ("\ufdfa" is
    # 18). A query already over it raw is not normalized at all.
    limit = limits.max_query_chars
    text = query.query if len(query.query) > limit else normalize_query(query.query)
    if len(text) > limit:
        raise InvalidInput(
            f"query is {len(text)} characters; the limit is {limit} (counted after "
            "Unicode normalization)",
            field="query",
        )
    if not 1 <= query.top_k <= limits.max_top_k:
        raise InvalidInput(f"top_k must be between 1 and {limits.max_top_k}", field="top_k")
    if not 1 <= query.candidates <= limits.max_candidates:
        raise InvalidInput(
            f"candidates must be between 1 and {limits.max_candidates}", field="candidates"
        )
    if query.candidates < query.top_k:
        raise InvalidInput(
            f"candidates ({query.candidates}) must be at least top_k ({query.top_k})",
            field="candidates",
        )
    validate_filter(query.filter)
    if query.rerank_depth is not None and not 1 <= query.rerank_depth <= limits.max_candidates:
        raise InvalidInput(
            f"rerank_depth must be between 1 and {limits.max_candidates}", field="rerank_depth"
        )
    if query.rerank_weight is not None and not 0.0 <= query.rerank_weight <= 1.0:
        raise InvalidInput("rerank_weight must be between 0 and 1", field="rerank_weight")
    if not 0 <= query.offset <= limits.max_candidates:
        raise InvalidInput(f"offset must be between 0 and {limits.max_candidates}", field="offset")
    if not 0.0 <= query.diversity <= 1.0:
        raise InvalidInput("diversity must be between 0 and 1", field="diversity")
    if query.min_score is not None and not math.isfinite(query.min_score):
        raise InvalidInput("min_score must be a finite number", field="min_score")
    low, high = limits.min_timeout_ms, limits.max_timeout_ms
    if query.timeout_ms is not None and not low <= query.timeout_ms <= high:
        # below the floor no search can finish: a client error, not a 504 later
        raise InvalidInput(f"timeout_ms must be between {low} and {high}", field="timeout_ms")
    return dataclasses.replace(query, query=text)


def validate_filter(raw: object) -> Filter | None:
    """A metadata filter: {field: value} for equality, {field: [values]} for "any of".

    Raises:
        InvalidInput: not that shape, a bad field name, or too many conditions or values.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise InvalidInput("filter must be a non-empty object of field: value", field="filter")
    if len(raw) > MAX_FILTER_CONDITIONS:
        raise InvalidInput(f"at most {MAX_FILTER_CONDITIONS} filter conditions", field="filter")
    for key, value in raw.items():
        if not isinstance(key, str) or not FILTER_KEY.fullmatch(key):
            raise InvalidInput(
                f"filter field {key!r} is not a top-level metadata name (letters, digits, _ "
                "and -; nested fields cannot be filtered on)",
                field="filter",
            )
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(
                f"filter.{key} needs 1 to {MAX_FILTER_VALUES} values", field=f"filter.{key}"
            )
        if not all(_filter_value(v) for v in values):
            raise InvalidInput(
                f"filter.{key} values must be strings, booleans, 64-bit integers or finite numbers",
                field=f"filter.{key}",
            )
    return raw


def _filter_value(value: object) -> bool:
    """A value both backends can store and compare: SQLite and Qdrant hold 64-bit integers,
    JSON parsers let NaN and lone surrogates through."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return lone_surrogate_at(value) is None
    return False
