"""OpenAI request bodies (validated) and response shapes (built as dicts, documented here).

Diffusion parameters are top-level body fields, which is where OpenAI clients put
`extra_body`. The common ones come from their declaration in `dserve.fields`; an algorithm's own
parameters pass through as extra fields and are validated by the algorithm's parameter model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from dserve.fields import CORE_FIELDS, wire_fields
from dserve.params import nullable

MAX_N = 16
MAX_STOP = 8
MAX_TOP_LOGPROBS = 20  # alternatives per token (vLLM's default cap)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


# The decoding fields (engine, generation_algorithm, steps, block_length, ..., temperature,
# max_tokens) come from their one declaration in dserve.fields, bounds and descriptions included.
DiffusionFields: type[BaseModel] = create_model(
    "DiffusionFields",
    __doc__="Diffusion decoding fields (send them with the OpenAI client's `extra_body`).",
    __module__=__name__,
    **wire_fields(CORE_FIELDS),
)


class _GenerationRequest(DiffusionFields):  # type: ignore[misc,valid-type]
    # extra="allow": an algorithm's own parameters arrive as extra fields
    model_config = ConfigDict(extra="allow")

    model: str = Field(..., max_length=512)
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="nucleus filter where the algorithm samples tokens with one (dream); elsewhere ignored"
    )
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stream_canvas: bool = Field(
        False,
        description="with stream: also send, per denoising step, the positions it committed (a `canvas` "
        "object on chunks with an empty delta; dserve extension, docs/api.md)",
    )
    user: str | None = None
    ignore_eos: bool = Field(False, description="generate all max_tokens, past EOS / end-of-turn (benchmarks; vLLM's field)")
    return_token_ids: bool = Field(False, description="add the prompt's and each choice's token ids (vLLM's field)")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="accepted; ignored")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="accepted; ignored")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        # A declared field with no null meaning (n, stream, ignore_eos, ...): an explicit null
        # asks for its default, as OpenAI's and vLLM's servers read it (docs/api.md, "null").
        if isinstance(data, dict):
            fixed = {k for k, f in cls.model_fields.items() if data.get(k, 0) is None and not nullable(f.annotation)}
            return {k: v for k, v in data.items() if k not in fixed} if fixed else data
        return data

    def algorithm_fields(self) -> dict[str, Any]:
        """The body fields that are decoding parameters (None = not given)."""
        return algorithm_fields(self)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=65536)
    logprobs: bool | None = Field(None, description="return each generated token's log-probability when committed")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token (needs logprobs)")


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = Field(False, description="the prompt before the completion; with logprobs, its per-token values (docs/eval.md)")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="log-probabilities of the tokens, with this many alternatives each"
    )
    max_tokens: int | None = Field(
        None, ge=0, le=65536, description="most tokens to generate; 0 with echo: score the prompt only"
    )


# ---- async job API (dLLM-Serve compatible) --------------------------------------------------


class GenerateRequest(DiffusionFields):  # type: ignore[misc,valid-type]
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(..., min_length=1)
    gen_length: int | None = Field(None, ge=1, le=65536, description="tokens to generate (max_tokens)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    def algorithm_fields(self) -> dict[str, Any]:
        """The body fields that are decoding parameters (None = not given)."""
        return algorithm_fields(self)


class GenerateBatchRequest(GenerateRequest):
    prompt: str | None = None  # type: ignore[assignment]
    prompts: list[str] = Field(..., min_length=1, max_length=256)

    def algorithm_fields(self) -> dict[str, Any]:
        fields = algorithm_fields(self)
        fields.pop("prompts", None)
        return fields


def algorithm_fields(body: BaseModel) -> dict[str, Any]:
    """A body's algorithm parameters as sent: the declared ones it sets (an explicit null
    included: null is a value, dserve.params.resolve_params), then its extra fields (an
    algorithm's own parameters, or fields request_fields.sort_fields ignores or refuses)."""
    fields = {f.name: getattr(body, f.name) for f in CORE_FIELDS if f.wire and f.param and f.name in body.model_fields_set}
    fields.update(body.model_extra or {})
    return fields


# ---- responses (documentation of the JSON the server sends) -----------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    nfe: int = Field(description="model forward passes spent on the request (dserve extension)")


class ChatChoice(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
