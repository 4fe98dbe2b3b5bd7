"""Tokenizers and chat templates, loaded from the checkpoint directory without remote code."""

from __future__ import annotations

import os
from typing import Any


def load_tokenizer(path: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer reads config.json and warns that it does not know model_type "llada";
    # the tokenizer itself is a standard one.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Render messages with the model's chat template (generation prompt added) and tokenize
    the text without adding special tokens again (the template already has BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; use /v1/completions")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]
