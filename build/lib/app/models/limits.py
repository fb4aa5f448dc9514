"""Request size limits shared by the model services: refuse with 413, never cut silently."""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import PayloadTooLarge


def check_text_length(text: str, *, max_chars: int, field: str) -> None:
    """Raise `PayloadTooLarge` naming `field` when `text` is longer than `max_chars`."""
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{field} is {len(text)} characters; the limit is {max_chars}", field=field
        )


def check_input_limits(texts: Sequence[str], *, max_items: int, max_chars: int, field: str) -> None:
    """Raise `PayloadTooLarge` naming the field when there are too many or too long texts."""
    if len(texts) > max_items:
        raise PayloadTooLarge(
            f"{len(texts)} items in one request; the limit is {max_items}", field=field
        )
    for i, text in enumerate(texts):
        check_text_length(text, max_chars=max_chars, field=f"{field}[{i}]")
