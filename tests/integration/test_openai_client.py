"""The real `openai` package, unchanged, against the embedder service running as a process."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI

from tests.integration.conftest import Service, child_env, free_port, start_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_openai_sdk_embeds_through_our_service(log_dir: Path, services: list[Service]) -> None:
    port = free_port()
    service = start_service(
        "embedder",
        [sys.executable, "-m", "uvicorn", "services.embedder.main:app", "--port", str(port)],
        port,
        child_env(),
        log_dir,
    )
    services.append(service)
    client = OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0)

    assert [m.id for m in client.models.list()] == ["sentence-transformers/all-MiniLM-L6-v2"]
    reply = client.embeddings.create(
        model="sentence-transformers/all-MiniLM-L6-v2",
        input=[
            "How many people live in Berlin?",
            "Berlin has 3.7 million inhabitants.",
            "Cats purr when content.",
        ],
    )  # the SDK asks for base64 and decodes it
    vectors = np.array([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert reply.usage.prompt_tokens > 10
    assert reply.model == "sentence-transformers/all-MiniLM-L6-v2"

    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input="hello", encoding_format="float", dimensions=64
    )
    assert len(floats.data[0].embedding) == 64

    from openai import NotFoundError

    with pytest.raises(NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert "served names" in str(raised.value)


def test_openai_sdk_with_an_alias(log_dir: Path, services: list[Service]) -> None:
    """A client that always sends `text-embedding-3-small` works once it is an alias."""
    port = free_port()
    env = child_env(SEMSEARCH_EMBEDDER_SERVED_MODEL_NAMES="text-embedding-3-small")
    command = [sys.executable, "-m", "uvicorn", "services.embedder.main:app", "--port", str(port)]
    service = start_service("embedder", command, port, env, log_dir)
    services.append(service)
    client = OpenAI(base_url=f"{service.url}/v1", api_key="not-needed", max_retries=0)

    assert [m.id for m in client.models.list()] == [
        "sentence-transformers/all-MiniLM-L6-v2",
        "text-embedding-3-small",
    ]
    reply = client.embeddings.create(model="text-embedding-3-small", input="Berlin")
    assert len(reply.data[0].embedding) == 384

    from openai import NotFoundError

    with pytest.raises(NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-ada-002", input="x")
    body = raised.value.body
    assert isinstance(body, dict) and body["type"] == "model_not_found"
    assert "'text-embedding-3-small'" in body["message"]
