"""Log-probabilities in the OpenAI response shapes: chat's `logprobs.content` and the legacy
completions' `tokens` / `token_logprobs` / `top_logprobs` / `text_offset`."""

from __future__ import annotations

from typing import Any

Entry = tuple[float, dict[int, float]] | None  # (logprob, {token id: logprob}); None: no value (a text's first token)


def token_text(tokenizer: Any, token: int) -> str:
    return tokenizer.decode([token])


def chat_logprobs(tokenizer: Any, ids: list[int], entries: list[Entry]) -> dict[str, Any]:
    content = []
    for token, entry in zip(ids, entries):
        text = token_text(tokenizer, token)
        logprob, top = entry if entry is not None else (None, {})
        alternatives = [
            {"token": token_text(tokenizer, t), "logprob": v, "bytes": list(token_text(tokenizer, t).encode())}
            for t, v in top.items()
        ]
        content.append({"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": alternatives})
    return {"content": content}


def completion_logprobs(tokenizer: Any, ids: list[int], entries: list[Entry], text_offset: int = 0) -> dict[str, Any]:
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for token, entry in zip(ids, entries):
        text = token_text(tokenizer, token)
        tokens.append(text)
        offsets.append(text_offset)
        text_offset += len(text)
        if entry is None:
            values.append(None)
            tops.append(None)
        else:
            values.append(entry[0])
            top: dict[str, float] = {}
            for t, v in entry[1].items():  # two ids may decode alike: keep the likelier
                top.setdefault(token_text(tokenizer, t), v)
            tops.append(top)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def merge(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Completion logprobs of the prompt, then of the generated text."""
    return {key: first[key] + second[key] for key in first}
