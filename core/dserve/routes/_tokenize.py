"""Prompt tokenization for the routes: a cheap length check first, then the tokenizer off
the event loop.

Tokenizing a few megabytes takes seconds; on the event loop that stalls every other request
and the health probes (a multi-GPU front then sees its workers as dead). So:

1. `check_prompt_chars` refuses, before any tokenizing, a prompt whose characters cannot fit
   the model's context: no token stands for more characters than the longest entry of the
   vocabulary, so `chars > context * longest_token` proves the prompt too long (400
   `context_length_exceeded`). Prompts under that bound are at most a few hundred KB.
2. `tokenize` runs the tokenizer (and chat template) on a worker thread; one at a time,
   since a fast tokenizer shared across threads can fail with "Already borrowed".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio

from dserve.errors import BadRequest

_tokenizer_lock = threading.Lock()
_longest_token: dict[int, int] = {}  # id(tokenizer) -> characters of its longest vocabulary entry


def longest_token_chars(tokenizer: Any) -> int:
    key = id(tokenizer)
    if key not in _longest_token:
        try:
            vocab = tokenizer.get_vocab()
            _longest_token[key] = max((len(t) for t in vocab), default=1) or 1
        except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: assume long tokens
            _longest_token[key] = 64
    return _longest_token[key]


def check_prompt_chars(service: Any, chars: int, param: str) -> None:
    """400 when `chars` characters certainly tokenize to more than the model's context."""
    context = service.model.info.max_length
    limit = context * longest_token_chars(service.model.tokenizer)
    if chars > limit:
        raise BadRequest(
            f"the prompt has {chars} characters, more than the model's context of {context} tokens can hold "
            f"(at most {limit} characters)",
            param=param,
            code="context_length_exceeded",
        )


def _locked(fn: Callable[..., Any], *args: Any) -> Any:
    with _tokenizer_lock:
        return fn(*args)


async def tokenize(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` (a tokenizing function) on a worker thread, never on the event loop."""
    return await anyio.to_thread.run_sync(_locked, fn, *args)
