"""dserve-llada2: inclusionAI's LLaDA2 Mixture-of-Experts diffusion LMs (LLaDA2.0-mini,
LLaDA2.0-flash) loaded from their published Hugging Face layout, and their published
block-diffusion decoding over a block-causal KV cache."""

from pathlib import Path

# The small trained LLaDA2-architecture checkpoint (training/arch_llada2.py), served with
# `--model` pointing here (not EMBEDDED_MODEL_DIR: that name would make it the server default).
TINY_MODEL_DIR = Path(__file__).parent / "checkpoints" / "llada2-tiny-instruct"
