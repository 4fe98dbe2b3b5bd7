"""dserve-llada: the LLaDA model family and its reference decoding loop."""

from pathlib import Path

# The small trained LLaDA-architecture checkpoint dserve serves when no --model is given.
EMBEDDED_MODEL_DIR = Path(__file__).parent / "checkpoints" / "llada-tiny-instruct"
EMBEDDED_MODEL_ID = "dserve/llada-tiny-instruct"
