"""The published per-step rule of LLaDA2's `generate`, for one sequence's block.

Sampling (`_sample_with_temperature_topk_topp`): at temperature 0, x0 = argmax and its
confidence p = softmax(logits)[x0] (no top-k / top-p); else the logits are divided by T,
filtered by top-k and top-p, and x0 is drawn from their softmax with p its probability there.
The logits are upcast to float32 first (the published model returns `logits.float()`).
The draw uses the sequence's own generator (the Gumbel-max trick in float64: the same
distribution as the published `torch.multinomial`, not the same draws).

Commit (per step, with the step's quota q from the fixed schedule of `block_length` over
`steps`): among the block's masked positions, if at least q have p > threshold, commit all of
them; else the min(q, #masked) most confident (ties lowest position first, a stable sort, where
the published `topk` leaves the order to the platform).
"""

from __future__ import annotations

import torch

from dserve.sampling import gumbel_argmax, rank_by_confidence


def _filter_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    if not k or k <= 0:
        return logits
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cumulative > p
    drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses p
    drop[..., 0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 [n], confidence [n] float32) for logits [n, V]."""
    logits = logits.float()
    if temperature == 0:
        probs = torch.softmax(logits, dim=-1)
        x0 = probs.argmax(-1)
        return x0, probs.gather(-1, x0[:, None]).squeeze(-1)
    logits = _filter_top_p(_filter_top_k(logits / temperature, top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    x0 = gumbel_argmax(torch.log(probs), 1.0, generator)
    return x0, probs.gather(-1, x0[:, None]).squeeze(-1)


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """The published `_get_num_transfer_tokens`: block_length over steps, remainder first
    (from the block length, not the block's mask count)."""
    base, rem = divmod(block_length, steps)
    return [base + 1 if i < rem else base for i in range(steps)]


def commit_rule(confidence: torch.Tensor, masked: torch.Tensor, *, quota: int, threshold: float) -> torch.Tensor:
    """Which positions [n] (bool) to commit: confidence [n] float32, masked [n] bool."""
    conf = torch.where(masked, confidence, torch.full_like(confidence, -float("inf")))
    high = conf > threshold
    n_high, n_masked = high.sum(), masked.sum()
    _, order = rank_by_confidence(conf[None])
    k = torch.minimum(torch.tensor(quota, device=conf.device), n_masked)
    ranks = torch.arange(conf.shape[-1], device=conf.device)
    top = torch.zeros_like(masked).scatter(-1, order[0], ranks < k)
    return torch.where(n_high >= quota, high, top)
