"""Primitives shared by the published masked-diffusion samplers (LLaDA, Fast-dLLM, dInfer)."""

from __future__ import annotations

import torch


GREEDY_DEFAULT_SEED = 0


def request_seed(seed: int | None, temperature: float) -> int | None:
    """The seed a sequence's generator starts from: the request's, or at temperature 0 a fixed
    one, so that algorithms that draw positions at random (dream/origin, remasking=random)
    are deterministic like every other greedy decode (docs/api.md, "Determinism")."""
    if seed is None and not temperature:
        return GREEDY_DEFAULT_SEED
    return seed


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A per-sequence generator, so a seeded request samples the same whatever its batch."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """argmax of exp(l) / (-log u)^T in float64 (LLaDA's `add_gumbel_noise`): a sample from
    softmax(l / T); plain argmax at T = 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    l64 = logits.to(torch.float64)
    u = torch.rand(l64.shape, generator=generator, dtype=torch.float64, device=l64.device)
    return (l64.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


def split_steps(n: int, steps: int) -> list[int]:
    """`n` tokens over `steps` steps, remainder first: 32 over 5 -> [7, 7, 6, 6, 6]."""
    base, rem = divmod(n, steps)
    return [base + 1 if i < rem else base for i in range(steps)]
