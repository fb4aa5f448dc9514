"""The exception table, the wire schemas' conversions, and the settings' public names."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    EmbedderUnavailable,
    InputTooLong,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    SemsearchError,
    Unauthorized,
    UpstreamError,
    error_for_status,
    http_status,
)
from app.protocol.documents import DocumentIn
from app.protocol.embeddings import EmbeddingsResponse
from app.protocol.ranking import rank_order
from app.protocol.search import SearchRequest


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), 422),
        (InputTooLong("x"), 422),
        (PayloadTooLarge("x"), 413),
        (NotFound("x"), 404),
        (Unauthorized("x"), 401),
        (Overloaded("x"), 429),
        (EmbedderUnavailable("x"), 503),
        (CircuitOpen("x"), 503),
        (DeadlineExceeded("x"), 504),
        (UpstreamError("x"), 502),
        (SemsearchError("x"), 500),
    ],
)
def test_one_table_maps_errors_to_status(error: SemsearchError, status: int) -> None:
    assert http_status(error) == status


def test_remote_errors_come_back_as_the_same_exceptions() -> None:
    assert isinstance(error_for_status(422, "input_too_long", "m"), InputTooLong)
    assert type(error_for_status(422, "invalid_request", "m")) is InvalidInput
    assert isinstance(error_for_status(429, "overloaded", "m"), Overloaded)
    assert isinstance(error_for_status(413, "payload_too_large", "m"), PayloadTooLarge)
    assert isinstance(error_for_status(500, "internal_error", "m"), UpstreamError)
    assert isinstance(error_for_status(418, "teapot", "m"), UpstreamError)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_response_round_trips_vectors(encoding: str) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    response = EmbeddingsResponse.build(vectors, "m", 12, encoding)
    parsed = EmbeddingsResponse.model_validate_json(response.model_dump_json())
    np.testing.assert_allclose(
        parsed.vectors(), vectors, rtol=0, atol=0 if encoding == "base64" else 1e-6
    )
    assert parsed.usage.prompt_tokens == 12


def test_rank_order_is_descending_and_stable_on_ties() -> None:
    assert rank_order([0.1, 0.5, 0.5, -1.0, 0.5]) == [1, 2, 4, 0, 3]


def test_search_request_defaults_and_candidates_never_below_top_k() -> None:
    query = SearchRequest(query="q").to_query(
        default_collection="default", default_top_k=10, default_candidates=100
    )
    assert (query.collection, query.top_k, query.candidates, query.rerank) == (
        "default",
        10,
        100,
        True,
    )
    wide = SearchRequest(query="q", top_k=150).to_query(
        default_collection="c", default_top_k=10, default_candidates=100
    )
    assert wide.candidates == 150


def test_search_query_must_be_encodable_text() -> None:
    with pytest.raises(ValidationError, match="surrogate") as raised:
        SearchRequest.model_validate(json.loads('{"query": "soil \\ud800 microbes"}'))
    assert raised.value.errors()[0]["loc"] == ("query",)
    assert SearchRequest(query="soil microbes \u00e9\U0001f331").query.endswith("\U0001f331")


def test_public_setting_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_MODEL", "/models/e5")
    monkeypatch.setenv("SEMSEARCH_RERANKER_MODEL", "/models/ce")
    monkeypatch.setenv("SEMSEARCH_REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_URL", "http://embedder:8001")
    monkeypatch.setenv("SEMSEARCH_RERANKER_URL", "")
    monkeypatch.setenv("SEMSEARCH_LOG_LEVEL", "debug")
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_PORT", "9001")
    gateway, embedder, reranker = GatewaySettings(), EmbedderSettings(), RerankerSettings()
    assert embedder.model == "/models/e5"
    assert embedder.port == 9001
    assert reranker.model == "/models/ce"
    assert gateway.redis_url == "redis://cache:6379/0"
    assert gateway.embedder_url == "http://embedder:8001"
    assert gateway.reranker_url is None  # empty means unset
    assert gateway.port == 8000  # SEMSEARCH_EMBEDDER_PORT is the embedder's, not the gateway's
    assert {gateway.log_level, embedder.log_level, reranker.log_level} == {"debug"}


def test_defaults_are_the_embedded_default() -> None:
    gateway = GatewaySettings()
    assert gateway.embedder_url is None
    assert gateway.reranker_url is None
    assert gateway.redis_url is None
    assert EmbedderSettings().model == "sentence-transformers/all-MiniLM-L6-v2"
    assert RerankerSettings().model == "cross-encoder/ms-marco-MiniLM-L-6-v2"


@pytest.mark.parametrize(
    ("schema", "field", "make"),
    [
        (DocumentIn, "text", lambda text: DocumentIn(id="d", text=text)),
        (SearchRequest, "query", lambda text: SearchRequest(query=text)),
    ],
)
def test_a_text_is_refused_as_blank_exactly_when_its_schema_pattern_says_so(
    schema: type[BaseModel], field: str, make: Callable[[str], BaseModel]
) -> None:
    """Blank as Python sees it (str.isspace): the schema's pattern states the whole rule, so
    clients and schemathesis agree with the server (a validator beyond the pattern refused
    "\\x1e", which the schema allowed). The blank characters are spelled out, not `\\s`, which
    each regex dialect reads differently (schemathesis, reading ECMA-262, sent "\\x85")."""
    import re

    source = schema.model_json_schema()["properties"][field]["pattern"]
    assert "\\s" not in source and "\\S" not in source
    pattern = re.compile(source)
    every = (chr(c) for c in range(0x110000))
    assert [c for c in every if (pattern.search(c) is None) != c.isspace()] == []
    spaces = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    for text in ("   ", spaces, *spaces, "a", " \x1e a", "\ufeff", "\u200b"):
        blank = not text.strip()
        assert (pattern.search(text) is None) is blank, repr(text)
        if blank:
            with pytest.raises(ValidationError):
                make(text)
        else:
            assert getattr(make(text), field) == text
