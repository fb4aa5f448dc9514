"""Deterministic fakes for the model seams: no weights, same answers on every machine.

They are not random: the embedder hashes words into buckets (a bag-of-words vector), and the
reranker scores word overlap, so tests can assert that the relevant passage wins and that
reranking changes the order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from app.errors import InputTooLong
from app.models import Embeddings
from app.types import InputType, ModelInfo, Truncate

_WORD = re.compile(r"\w+")
FAKE_DIMENSION = 64
FAKE_MAX_TOKENS = 256


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _check_length(
    texts: Sequence[str], truncate: Truncate, max_tokens: int, field: str = "input"
) -> None:
    if truncate is not Truncate.NONE:
        return
    for i, text in enumerate(texts):
        n = len(_words(text))
        if n > max_tokens:
            raise InputTooLong(
                f"{field} {i} is {n} tokens; the model reads at most {max_tokens}. Shorten "
                "it, or ask for truncation",
                field=f"{field}[{i}]",
            )


class _AlwaysReady:
    """A fake's lifecycle: nothing to load, always ready and healthy."""

    _info: ModelInfo

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def ready(self) -> bool:
        return True

    @property
    def status(self) -> str:
        return "ready"

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class FakeEmbedder(_AlwaysReady):
    """Bag-of-words hashing embedder. Words shared by two texts raise their cosine."""

    def __init__(
        self,
        model_id: str = "fake",
        dimension: int = FAKE_DIMENSION,
        max_tokens: int = FAKE_MAX_TOKENS,
    ) -> None:
        self._info = ModelInfo(
            model_id=model_id,
            kind="embedding",
            dimension=dimension,
            max_tokens=max_tokens,
            backend="fake",
            device="cpu",
        )
        self.calls: list[tuple[list[str], InputType]] = []

    async def embed(
        self,
        texts: Sequence[str],
        input_type: InputType,
        truncate: Truncate = Truncate.NONE,
        normalize: bool = True,
    ) -> Embeddings:
        _check_length(texts, truncate, self._info.max_tokens)
        self.calls.append((list(texts), input_type))
        dim = self._info.dimension or FAKE_DIMENSION
        out = np.zeros((len(texts), dim), dtype=np.float32)
        tokens = 0
        for row, text in enumerate(texts):
            words = _words(text)
            if truncate is Truncate.START:
                words = words[-self._info.max_tokens :]
            elif truncate is Truncate.END:
                words = words[: self._info.max_tokens]
            tokens += len(words)
            for word in words or ["<empty>"]:
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % dim
                sign = 1.0 if digest[4] & 1 else -1.0
                out[row, bucket] += sign
            if normalize:
                out[row] /= max(float(np.linalg.norm(out[row])), 1e-12)
        return Embeddings(vectors=out, prompt_tokens=tokens)


class FakeReranker(_AlwaysReady):
    """Scores a pair by the share of query words found in the passage, as a logit."""

    def __init__(self, model_id: str = "fake", max_tokens: int = 512) -> None:
        self._info = ModelInfo(
            model_id=model_id,
            kind="reranker",
            dimension=None,
            max_tokens=max_tokens,
            backend="fake",
            device="cpu",
        )
        self.calls: list[tuple[str, list[str]]] = []

    async def score(
        self, query: str, passages: Sequence[str], truncate: Truncate = Truncate.END
    ) -> list[float]:
        _check_length(
            [f"{query} {p}" for p in passages], truncate, self._info.max_tokens, "passages"
        )
        self.calls.append((query, list(passages)))
        q = set(_words(query))
        scores = []
        for passage in passages:
            p = set(_words(passage))
            share = len(q & p) / max(len(q), 1)
            # a logit: map the share (0..1) to -4..4 so sigmoid() gives a sensible probability
            scores.append(8.0 * share - 4.0)
        return scores
