"""What every service's wire format shares: request texts, field names in errors, the error
shape, health, readiness and TEI-style `/info`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from app.types import ModelInfo, lone_surrogate_at


class StrictRequest(BaseModel):
    # Unknown fields are refused, so a typo (`topk`) is a clear 422, not a silent default.
    model_config = ConfigDict(extra="forbid")


def valid_text(value: str) -> str:
    at = lone_surrogate_at(value)
    if at is not None:
        raise ValueError(f"is not valid Unicode text: a lone surrogate at character {at}")
    return value


def _valid_if_text(value: Any) -> Any:
    return valid_text(value) if isinstance(value, str) else value


# Checked before the string's own validation, so a lone surrogate is named as such even where
# a pattern applies (pydantic's regex engine would refuse it first, as "not a unicode string").
Text = Annotated[str, BeforeValidator(_valid_if_text)]
"""A request text: any string that can be encoded as UTF-8 (422 naming the field if not)."""

# A text that is not blank, as Python's str.isspace sees blank. As a schema pattern, so the
# schema states the whole rule and clients (and schemathesis) agree with the server. Each
# blank character is spelled out: `\s` means a different set in each regex dialect (ECMA-262,
# which JSON Schema clients use, leaves out U+0085 and \x1c-\x1f and adds U+FEFF; the server's
# Rust engine leaves out \x1c-\x1f), and schemathesis sent "\u0085" as not blank.
NOT_BLANK = r"[^\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def problem_message(problem: Mapping[str, Any]) -> str:
    """A pydantic error's message as a client reads it ("must not be blank", not the regex)."""
    context = problem.get("ctx") or {}
    if problem.get("type") == "string_pattern_mismatch" and context.get("pattern") == NOT_BLANK:
        return "must not be blank"
    return str(problem.get("msg"))


def _one_or_many(value: Any, handler: ValidatorFunctionWrapHandler) -> list[str]:
    # A lone text is checked here so its error names the field itself (`input`, not `input[0]`).
    if isinstance(value, str):
        return [valid_text(value)]
    texts: list[str] = handler(value)
    return texts


Texts = Annotated[
    list[Text],
    WrapValidator(_one_or_many, json_schema_input_type=str | list[str]),
    Field(min_length=1),
]
"""One text or a non-empty list of texts, always read as a list."""


def field_name(loc: Sequence[int | str]) -> str:
    """How errors name a field: `passages[0].text` for pydantic's ("passages", 0, "text")."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or "body"


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    components: dict[str, Any]


class ModelCard(BaseModel):
    """One entry of OpenAI's `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "semsearch"


class ModelList(BaseModel):
    """OpenAI's `GET /v1/models`: the names this service answers to."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class InfoResponse(BaseModel):
    """TEI-style `GET /info`: what the service serves and its limits."""

    model_id: str
    kind: str
    dimension: int | None
    max_input_tokens: int
    backend: str
    device: str
    max_items_per_request: int
    max_chars_per_item: int
    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue_items: int
    served_model_names: list[str] = Field(
        default_factory=list, description="Other names a request's `model` may use."
    )

    def to_model_info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id,
            kind=self.kind,
            dimension=self.dimension,
            max_tokens=self.max_input_tokens,
            backend=self.backend,
            device=self.device,
        )
