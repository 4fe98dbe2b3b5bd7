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


def rank_by_confidence(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences [..., w] sorted descending and their positions; equal confidences lowest
    position first (a stable sort, where the published `topk` leaves the order to the platform)."""
    return torch.sort(conf, dim=-1, descending=True, stable=True)


def top1_and_threshold_count(values: torch.Tensor, n: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The published threshold rule (Fast-dLLM's `get_transfer_index` with a threshold, Nemotron
    block diffusion): how many of the best-ranked positions to commit [B], given sorted
    confidences `values` [B, w] of which the first `n` [B] are in scope: the most confident one
    unconditionally (when any is in scope), then every other in scope with confidence >=
    `threshold` [B] (compared in the confidences' dtype). Runs on the device without a host sync."""
    ranks = torch.arange(values.shape[-1], device=values.device)
    above = (values >= threshold[:, None].to(values.dtype)) & (ranks[None, :] < n[:, None]) & (ranks[None, :] >= 1)
    return torch.where(n == 0, 0, 1 + above.sum(-1))


def keep_best(order: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Which positions to commit [B, w] (bool): the `k` [B] best of the ranking `order` [B, w]
    (as `rank_by_confidence` returns it)."""
    ranks = torch.arange(order.shape[-1], device=order.device)
    keep = ranks[None, :] < k[:, None]
    return torch.zeros_like(keep).scatter(-1, order, keep)


def top_confident(conf: torch.Tensor, *, threshold: float | None, quota: int) -> torch.Tensor:
    """One row's commit under the threshold rule, or without a threshold its `quota` most
    confident positions: conf [w] with -inf outside the scope; returns [w] bool."""
    values, order = rank_by_confidence(conf[None])
    n = (values > -float("inf")).sum(-1)
    if threshold is None:
        k = torch.clamp(n, max=quota)
    else:
        k = top1_and_threshold_count(values, n, torch.full((1,), threshold, dtype=torch.float64, device=conf.device))
    return keep_best(order, k)[0]
