"""vLLM's `/tokenize` and `/detokenize`, in its request and response shapes.

A prompt is tokenized as the generation routes tokenize it: `prompt` as `/v1/completions` does
(no special tokens added unless `add_special_tokens: true`), `messages` through the chat
template as `/v1/chat/completions` does. So `count` is what `usage.prompt_tokens` will say.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dserve.errors import BadRequest
from dserve.protocol import ChatMessage
from dserve.routes._common import parse_body
from dserve.routes._tokenize import check_prompt_chars, tokenize


class TokenizeRequest(BaseModel):
    """Either `prompt` (completions) or `messages` (chat)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=512, description="the served model id (optional)")
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = Field(False, description="add the tokenizer's special tokens (BOS) to a prompt")
    add_generation_prompt: bool = Field(True, description="messages: end with the assistant turn's header")
    return_token_strs: bool = Field(False, description="also return each token's text")

    @model_validator(mode="after")
    def _one_of(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=512, description="the served model id (optional)")
    tokens: list[int] = Field(..., max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


def _ready_service(request: Request, model: str | None) -> Any:
    service = request.app.state.dserve
    service.check_model(model if model is not None else service.model_id)
    return service


async def tokenize_route(request: Request) -> Response:
    body = await parse_body(request, TokenizeRequest)
    service = _ready_service(request, body.model)
    tok = service.model.tokenizer
    if body.messages is not None:
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
        check_prompt_chars(service, sum(len(m["content"]) for m in messages), "messages")
        if not getattr(tok, "chat_template", None):
            raise BadRequest("this model's tokenizer has no chat template; tokenize a prompt", param="messages")

        def chat_ids() -> list[int]:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=body.add_generation_prompt)
            return tok(text, add_special_tokens=False)["input_ids"]

        ids = await tokenize(chat_ids)
    else:
        prompt = body.prompt or ""
        check_prompt_chars(service, len(prompt), "prompt")
        ids = await tokenize(lambda: tok(prompt, add_special_tokens=body.add_special_tokens)["input_ids"])
    strs = tok.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return JSONResponse({"count": len(ids), "max_model_len": service.model.info.max_length, "tokens": ids, "token_strs": strs})


async def detokenize_route(request: Request) -> Response:
    body = await parse_body(request, DetokenizeRequest)
    service = _ready_service(request, body.model)
    vocab = service.model.info.vocab_size
    if any(not 0 <= t < vocab for t in body.tokens):
        raise BadRequest(f"token ids must be in [0, {vocab})", param="tokens")
    text = await tokenize(service.model.tokenizer.decode, body.tokens)
    return JSONResponse({"prompt": text})
