"""Tokenize once: count tokens, refuse or cut overflow as asked, build model inputs.

Built on the `tokenizers` library directly (no torch, no transformers), so every backend
(torch, ONNX) and the batcher's token budget see the same ids. Truncation is applied to each
encoding, never set on the shared tokenizer, so concurrent requests cannot disturb each other.

Also what a model folder declares: its token window, the positions it has room for, and its
tokenizer (transformers builds one only for older checkpoints that ship a bare vocabulary).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from app.errors import InputTooLong
from app.logs import get_logger
from app.types import Truncate

log = get_logger(__name__)

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Encoded:
    """Model-ready ids of one text (or one query/passage pair), special tokens included."""

    ids: list[int]
    type_ids: list[int]
    original_tokens: int  # before truncation: what `usage` reports and NONE checks

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Padded:
    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray


class TextTokenizer:
    """A model's tokenizer with a fixed window (max tokens per input, special tokens included)."""

    def __init__(self, tokenizer: Tokenizer, window: int) -> None:
        self._tok = tokenizer
        # tokenizer.json files often carry truncation/padding settings (MiniLM's: 128 tokens);
        # we do both ourselves, per input.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.window = window
        pad = tokenizer.token_to_id("[PAD]")
        if pad is None:
            pad = tokenizer.token_to_id("<pad>")
        self.pad_id = pad if pad is not None else 0
        self._single_special = tokenizer.num_special_tokens_to_add(False)
        self._pair_special = tokenizer.num_special_tokens_to_add(True)

    @classmethod
    def from_folder(cls, folder: str | Path, window: int) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")), window)

    def encode(
        self, texts: Sequence[str], truncate: Truncate, field: str = "input", prefix: str = ""
    ) -> list[Encoded]:
        """Encode single texts, each after `prefix` (an instruction such as `query: `).

        Truncation cuts the text only: the prefix stays in front, whichever end is cut.

        Raises:
            InputTooLong: a text is over the window and `truncate` is NONE (names `field[i]`).
        """
        room = self.window - self._single_special
        head = self._tok.encode(prefix, add_special_tokens=False) if prefix else None
        out = []
        whole = [prefix + text for text in texts]
        for i, enc in enumerate(self._tok.encode_batch(whole, add_special_tokens=False)):
            total = len(enc.ids) + self._single_special
            if total > self.window:
                if truncate is Truncate.NONE:
                    raise InputTooLong(
                        f"input {i} is {total} tokens; the model reads at most {self.window}. "
                        "Shorten it, or ask for truncate END or START",
                        field=f"{field}[{i}]",
                    )
                if head is None:
                    _cut(enc, room, truncate)
                else:
                    enc = self._tok.encode(texts[i], add_special_tokens=False)
                    _cut(enc, room - len(head.ids), truncate)
                    enc = Encoding.merge([head, enc], growing_offsets=True)
                    _cut(enc, room, Truncate.END)  # only if the prefix alone is over the window
            out.append(self._finish(enc, None, total))
        return out

    def encode_pairs(
        self, query: str, passages: Sequence[str], truncate: Truncate, field: str = "passages"
    ) -> list[Encoded]:
        """Encode (query, passage) pairs for a cross-encoder.

        A pair that fits the window is kept whole. One that overflows cuts the passage first;
        the query gives up tokens only beyond half the window, so every passage keeps room.

        Raises:
            InputTooLong: a pair is over the window and `truncate` is NONE (names `query`
                when the query alone is over half the window, else `field[i]`).
        """
        q = self._tok.encode(query, add_special_tokens=False)
        room = self.window - self._pair_special
        half = room // 2
        cut_queries: dict[int, Encoding] = {}
        out = []
        for i, enc in enumerate(self._tok.encode_batch(list(passages), add_special_tokens=False)):
            total = len(q.ids) + len(enc.ids) + self._pair_special
            first = q
            if total > self.window:
                if truncate is Truncate.NONE and len(q.ids) > half:
                    raise InputTooLong(
                        f"the query is {len(q.ids)} tokens; with passage {i} the pair is "
                        f"{total} tokens, and at most {half} query tokens fit next to a passage",
                        field="query",
                    )
                if truncate is Truncate.NONE:
                    raise InputTooLong(
                        f"passage {i} with the query is {total} tokens; the model reads at most "
                        f"{self.window}. Shorten it, or ask for truncation",
                        field=f"{field}[{i}]",
                    )
                # keep as much of the query as the passage leaves, and at least half the room
                keep = max(half, room - len(enc.ids))
                if keep < len(q.ids):
                    if keep not in cut_queries:
                        cut_queries[keep] = self._tok.encode(query, add_special_tokens=False)
                        _cut(cut_queries[keep], keep, Truncate.END)
                    first = cut_queries[keep]
                _cut(enc, room - len(first.ids), truncate)
            out.append(self._finish(first, enc, total))
        return out

    @property
    def special_tokens(self) -> int:
        """Special tokens a single text gets ([CLS] ... [SEP]: 2 for BERT)."""
        return self._single_special

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text`'s tokens (no special tokens): where chunks may be cut."""
        return list(self._tok.encode(text, add_special_tokens=False).offsets)

    def _finish(self, first: Encoding, second: Encoding | None, original: int) -> Encoded:
        final = self._tok.post_process(first, second, add_special_tokens=True)
        return Encoded(list(final.ids), list(final.type_ids), original)

    def pad(self, batch: Sequence[Encoded]) -> Padded:
        """Right-pad a batch to its longest item (int64 arrays, as the models expect)."""
        longest = max(len(e) for e in batch)
        ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        types = np.zeros((len(batch), longest), dtype=np.int64)
        for row, e in enumerate(batch):
            n = len(e)
            ids[row, :n] = e.ids
            mask[row, :n] = 1
            types[row, :n] = e.type_ids
        return Padded(ids, mask, types)


def _cut(enc: Encoding, room: int, truncate: Truncate) -> None:
    enc.truncate(max(room, 0), direction="left" if truncate is Truncate.START else "right")


# -- what a model folder declares ---------------------------------------------------------


def configured_window(folder: Path) -> int:
    """The model's own token window, from the files sentence-transformers and transformers
    write (sentence-transformers 6 keeps it in tokenizer_config.json), else 512."""

    def read(name: str, key: str) -> int | None:
        path = folder / name
        value = json.loads(path.read_text()).get(key) if path.is_file() else None
        return int(value) if isinstance(value, int | float) and 0 < value < 100_000 else None

    return (
        read("sentence_bert_config.json", "max_seq_length")
        or read("tokenizer_config.json", "model_max_length")
        or read("config.json", "max_position_embeddings")
        or 512
    )


# Architectures whose position ids start after the padding index (fairseq's convention), so
# two of `max_position_embeddings` are never usable: RoBERTa's 514 read 512 tokens.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "bart"}


def within_positions(folder: Path, window: int) -> int:
    """`window`, capped at the tokens the model has positions for: a longer input would index
    past the position table and fail the whole batch it is in."""
    path = folder / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    positions = config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return window
    if config.get("model_type") in _OFFSET_POSITIONS:
        positions -= 2
    if window <= positions:
        return window
    log.warning(
        "model_window_capped",
        model=str(folder),
        configured=window,
        window=positions,
        reason="the model has no position embeddings past this",
    )
    return positions


def tokenizer_for(folder: Path, window: int) -> TextTokenizer:
    """The fast tokenizer of a model folder, cutting at `window` tokens."""
    if (folder / "tokenizer.json").is_file():
        return TextTokenizer.from_folder(folder, window)
    # Older checkpoints ship only a vocabulary: let transformers build the fast tokenizer.
    from transformers import AutoTokenizer

    return TextTokenizer(AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer, window)
