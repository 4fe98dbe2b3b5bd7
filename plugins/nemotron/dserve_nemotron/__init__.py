"""dserve-nemotron: NVIDIA's diffusion LMs (Nemotron-Labs-Diffusion and relatives) and their
native decoding loops (block diffusion over an exact KV cache, autoregressive, self-speculative)."""

from pathlib import Path

# The small trained block-causal checkpoint (training/arch_nemotron.py), served with
# `--model` pointing here. Deliberately not named EMBEDDED_MODEL_DIR: that name makes a plugin's
# model the server's default when no --model is given, which stays llada-tiny-instruct.
TINY_MODEL_DIR = Path(__file__).parent / "checkpoints" / "nemotron-tiny-instruct"
