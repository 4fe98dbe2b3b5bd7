"""Dream's tokenizer without remote code.

Published Dream checkpoints name `DreamTokenizer` (remote code `tokenization_dream.py`), which
is Qwen2's byte-level BPE over `vocab.json` + `merges.txt` with the same pre-tokenizer regex.
transformers' own Qwen2 tokenizer reads the same files, the added tokens and the chat template
from tokenizer_config.json, so it stands in for it. Directories with a tokenizer class
transformers knows (our tiny checkpoints: a fast tokenizer.json) load as they are.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from dserve.modeling.tokenizer import load_tokenizer

REMOTE_ONLY_CLASSES = {"DreamTokenizer"}


def load_dream_tokenizer(path: str | os.PathLike) -> Any | None:
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    if not config_file.exists() and not (path / "tokenizer.json").exists():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    if config.get("tokenizer_class") not in REMOTE_ONLY_CLASSES:
        with warnings.catch_warnings():
            # AutoTokenizer also reads config.json, whose published `rope_scaling` key newer
            # transformers flags as deprecated; the tokenizer does not depend on it
            warnings.simplefilter("ignore", FutureWarning)
            return load_tokenizer(path)
    from transformers import Qwen2Tokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that the config names another class
    try:
        return Qwen2Tokenizer.from_pretrained(str(path), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)
