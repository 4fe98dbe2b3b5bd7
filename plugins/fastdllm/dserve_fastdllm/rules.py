"""Fast-dLLM's per-row scores and commit rules (NVlabs/Fast-dLLM llada/generate.py,
`get_transfer_index` and, from revision f6b35ec, `get_transfer_index_dynamic`).

Everything here works on one sequence's current block: `logits` [n, V] for the block's n
positions, `conf` [n] with -inf outside the scope (positions of the block that are still masked).
The published code scores the whole canvas row with -inf outside the block; restricting to the
block picks the same positions (up to the order of exactly equal float64 confidences).
"""

from __future__ import annotations

import torch

from dserve.sampling import gumbel_argmax


def predict(
    logits: torch.Tensor,
    *,
    temperature: float,
    remasking: str,
    mask_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions x0 [n] and their confidences [n] for one block's logits [n, V].

    x0 = argmax of the (Gumbel-noised at T > 0, float64) logits; confidence = float64 softmax of
    the un-noised logits at x0 ('low_confidence'), or uniform float32 noise ('random').
    Deviation: the mask token itself is never predicted. The published code may pick it, and
    then "commits" a mask (a no-op that can keep a block from ever finishing); a served model
    essentially never ranks it first, so outputs agree whenever the published code terminates.
    """
    candidates = logits.clone()
    candidates[:, mask_id] = -float("inf")
    x0 = gumbel_argmax(candidates, temperature, generator)
    if remasking == "low_confidence":
        probs = torch.softmax(logits.to(torch.float64), dim=-1)
        conf = torch.gather(probs, -1, x0[:, None]).squeeze(-1)
    else:
        conf = torch.rand(x0.shape, generator=generator, device=x0.device)
    return x0, conf


def transfer_mask(
    conf: torch.Tensor,
    n: int,
    *,
    quota: int | None = None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """Which block positions to commit [n_block] (bool), from confidences with -inf outside the
    scope and `n` = the scope size. Exactly one of quota / threshold / factor applies, in the
    precedence factor > threshold > quota. Runs on the device without a host sync."""
    values, order = torch.sort(conf, descending=True, stable=True)
    if factor is not None:
        k = factor_count(values, n, factor)
    elif threshold is not None:
        k = threshold_count(values, n, threshold)
    else:
        k = min(quota if quota is not None else n, n)
    keep = torch.arange(len(conf), device=conf.device) < k
    return torch.zeros_like(keep).scatter(0, order, keep)


def threshold_count(values: torch.Tensor, n: int, threshold: float) -> torch.Tensor | int:
    """The published threshold rule: topk(conf, n) descending, keep the first unconditionally,
    keep every other one with conf >= threshold. `values` sorted descending."""
    if n == 0:
        return 0
    return 1 + (values[1:n] >= threshold).sum()


def factor_count(values: torch.Tensor, n: int, factor: float) -> torch.Tensor | int:
    """The published factor rule (f6b35ec): bar(0) = -1, bar(r) = 1 - factor / (r + 2);
    k = the first rank r whose confidence is below its bar; no failing rank, or only the last
    one failing (a quirk kept as published), commits all n. `values` sorted descending."""
    if n == 0:
        return 0
    ranks = torch.arange(n, dtype=torch.float64, device=values.device)
    bars = 1.0 - factor / (ranks + 2.0)
    bars[0] = -1.0
    fails = torch.cat([values[:n] < bars, torch.ones(1, dtype=torch.bool, device=values.device)])
    first = fails.to(torch.int8).argmax()  # lowest failing rank; n when none fails
    return torch.where(first >= n - 1, n, first.clamp(min=1))


# ---- the same rules over a batch of rows (one step of many sequences, no per-row kernels) ----


def predict_rows(
    logits: torch.Tensor,
    *,
    temperatures: list[float],
    remasking: str,
    mask_id: int,
    generators: list[torch.Generator],
    chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict` for rows sharing one remasking mode: logits [B, n, V] -> x0, conf [B, n].

    Row r equals predict(logits[r], temperature=temperatures[r], ...): the same float64
    softmax, and each row's generator draws what it would draw alone. The float64 softmax runs
    over `chunk` rows at a time to bound its memory (B x n x V doubles)."""
    candidates = logits.clone()
    candidates[..., mask_id] = -float("inf")
    x0 = candidates.argmax(dim=-1)
    for r, temperature in enumerate(temperatures):
        if temperature != 0:
            x0[r] = gumbel_argmax(candidates[r], temperature, generators[r])
    if remasking == "low_confidence":
        conf = torch.cat([
            torch.softmax(logits[i : i + chunk].to(torch.float64), dim=-1).gather(-1, x0[i : i + chunk, :, None]).squeeze(-1)
            for i in range(0, logits.shape[0], chunk)
        ])
    else:
        conf = torch.stack([torch.rand(x0.shape[1:], generator=g, device=x0.device) for g in generators])
    return x0, conf


def transfer_masks(
    conf: torch.Tensor,
    n: torch.Tensor,
    *,
    quota: torch.Tensor,
    threshold: torch.Tensor,
    factor: torch.Tensor,
) -> torch.Tensor:
    """`transfer_mask` for every row at once: conf [B, w] (-inf outside each row's scope), n [B]
    scope sizes; per row quota [B] (long), threshold and factor [B] (NaN where the row does not
    use that rule), with the same precedence factor > threshold > quota."""
    values, order = torch.sort(conf, dim=-1, descending=True, stable=True)
    width = conf.shape[-1]
    ranks = torch.arange(width, device=conf.device)
    in_scope = ranks[None, :] < n[:, None]
    k_quota = torch.minimum(quota, n)
    above = (values >= threshold[:, None].to(values.dtype)) & in_scope & (ranks[None, :] >= 1)
    k_threshold = torch.where(n == 0, 0, 1 + above.sum(-1))
    bars = 1.0 - factor[:, None].to(torch.float64) / (ranks[None, :].to(torch.float64) + 2.0)
    bars[:, 0] = -1.0
    fails = (values < bars) | ~in_scope
    fails = torch.cat([fails, torch.ones_like(fails[:, :1])], dim=-1)
    first = fails.to(torch.int8).argmax(-1)  # lowest failing rank; n when none fails
    k_factor = torch.where(first >= n - 1, n, first.clamp(min=1))
    k = torch.where(~factor.isnan(), k_factor, torch.where(~threshold.isnan(), k_threshold, k_quota))
    keep = ranks[None, :] < k[:, None]
    return torch.zeros_like(keep).scatter(-1, order, keep)


def leftmost_confident_run(
    conf: torch.Tensor, masked: torch.Tensor, threshold: torch.Tensor, max_parallel: torch.Tensor
) -> torch.Tensor:
    """APD's commit rule for every row: the masked positions of the block, taken left to right
    while each clears `threshold` [B], at most `max_parallel` [B], and always the first one.
    conf, masked: [B, n]. Returns [B, n] bool."""
    rank = masked.long().cumsum(-1) - 1  # index among the row's masked positions
    unsure = masked & (conf < threshold[:, None].to(conf.dtype))
    before_first_unsure = unsure.long().cumsum(-1) == 0
    run = masked & before_first_unsure & (rank < max_parallel[:, None])
    return run | (masked & (rank == 0))
