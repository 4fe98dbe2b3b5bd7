"""dserve-dream: the Dream model family (a Qwen2.5-shaped bidirectional model with shifted
logits) and the `dream` engine (Dream's own `diffusion_generate` as a step-wise runner)."""

from pathlib import Path

# A small trained Dream-architecture checkpoint (training/train_tiny.py --arch dream), served with
# `dserve --model <this dir>`. Deliberately not named EMBEDDED_MODEL_DIR: the core serves the first
# plugin's EMBEDDED_MODEL_DIR when no --model is given, and that default stays dserve-llada's.
TINY_MODEL_DIR = Path(__file__).parent / "checkpoints" / "dream-tiny-instruct"
TINY_MODEL_ID = "dserve/dream-tiny-instruct"
