"""`from dserve import LLM`: generation in-process, without HTTP (vLLM's `LLM(...).generate`).

The same loader, service, scheduler and runners as the server: a list of prompts is queued as
that many requests, batched by the scheduler as concurrent HTTP requests would be, so outputs
are the server's outputs (at temperature 0, whatever else is in the batch). Decoding fields are
the request body's (`temperature`, `steps`, `generation_algorithm`, an algorithm's own
parameters, ...), validated and resolved exactly as a request's. docs/python-api.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dserve.errors import APIError


@dataclass(frozen=True)
class Generation:
    """One prompt's result."""

    prompt: str | list[dict[str, Any]] | list[int]  # as given: text, chat messages or token ids
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]  # the answer's tokens (no EOS / end-of-turn; within max_tokens)
    finish_reason: str  # "stop" or "length"
    nfe: int  # model forward passes spent on it


class LLM:
    """A model loaded in this process, ready to generate.

    `LLM(model=None, **settings)`: any `dserve serve` setting by its Settings name
    (`model`, `revision`, `device`, `dtype`, `engine`, `algorithm`, `max_batch_size`,
    `threshold`, ...); `DSERVE_*` variables apply too. With no model, the embedded one.
    """

    def __init__(self, model: str | None = None, **settings: Any) -> None:
        import structlog

        from dserve.plugins import build_registry, get_plugin_manager
        from dserve.service import GenerationService
        from dserve.settings import Settings

        if not structlog.is_configured():  # a library stays quiet unless asked
            from dserve.logs import configure_logging

            configure_logging(level=settings.pop("log_level", "warning"), cache=False)
        self.settings = Settings(model=model, **settings)
        self._service = GenerationService(self.settings, build_registry(get_plugin_manager()))
        self._service.load()

    @property
    def model_id(self) -> str:
        return self._service.model_id

    @property
    def tokenizer(self) -> Any:
        return self._service.model.tokenizer

    def generate(
        self, prompts: str | Sequence[str] | Sequence[Sequence[int]], *, use_tqdm: bool = True, **fields: Any
    ) -> list[Generation]:
        """Complete each prompt (text, or token ids), as `/v1/completions` would; `fields`
        are request body fields (`max_tokens`, `temperature`, `seed`, `stop`, `ignore_eos`,
        `engine`, `generation_algorithm`, `steps`, an algorithm's parameters, ...)."""
        from dserve.modeling.tokenizer import completion_prompt_ids

        items: list[Any] = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [completion_prompt_ids(self.tokenizer, p) if isinstance(p, str) else [int(t) for t in p] for p in items]
        return self._run(items, ids, fields, use_tqdm)

    def chat(
        self,
        conversations: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        use_tqdm: bool = True,
        **fields: Any,
    ) -> list[Generation]:
        """Answer each conversation (a list of `{"role", "content"}` messages; one conversation
        or a list of them) through the model's chat template, as `/v1/chat/completions` would."""
        from dserve.modeling.tokenizer import chat_prompt_ids
        from dserve.protocol import ChatMessage

        convs = [conversations] if conversations and isinstance(conversations[0], Mapping) else list(conversations)
        items: list[Any] = []
        ids: list[list[int]] = []
        for conv in convs:
            messages = [ChatMessage.model_validate(m) for m in conv]
            rendered = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in messages]
            items.append([dict(m) for m in conv])  # type: ignore[arg-type]
            ids.append(chat_prompt_ids(self.tokenizer, rendered))
        return self._run(items, ids, fields, use_tqdm)

    def close(self) -> None:
        """Stop the scheduler (the model is freed with the object)."""
        self._service.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the requests --------------------------------------------------------------------------

    def _run(self, items: list, ids: list[list[int]], fields: dict[str, Any], use_tqdm: bool) -> list[Generation]:
        from pydantic import ValidationError

        from dserve.protocol import CompletionRequest

        try:  # the body a request would send: same bounds, same field policy, same resolution
            body = CompletionRequest.model_validate({"model": self.model_id, "prompt": "", **fields})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"invalid value for {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None
        try:
            spec, _ = self._service.resolve_body(body)
        except APIError as exc:
            raise ValueError(str(exc)) from None
        return asyncio.run(self._generate_all(items, ids, spec, body, use_tqdm))

    async def _generate_all(self, items, ids, spec, body, use_tqdm: bool) -> list[Generation]:
        from dserve.progress import ProgressBar
        from dserve.service import collect_text

        service = self._service
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(max(1, service.settings.max_queue_size))  # never a full queue
        bar = ProgressBar(total=len(items), desc="Generating", unit="prompt", disable=not use_tqdm)

        async def one(item, prompt_ids: list[int]) -> Generation:
            async with slots:
                (handle,) = service.submit(
                    prompt_ids,
                    spec,
                    max_tokens=body.max_tokens,
                    n=1,
                    seed=body.seed,
                    stop=body.stop,
                    loop=loop,
                    ignore_eos=body.ignore_eos,
                )
                text = await collect_text(handle)
            bar.update(1)
            tracker = handle.tracker
            return Generation(
                item, list(prompt_ids), text, list(tracker.output_ids), tracker.finish_reason or "length", handle.nfe
            )

        try:
            return list(await asyncio.gather(*(one(item, p) for item, p in zip(items, ids))))
        finally:
            bar.close()
