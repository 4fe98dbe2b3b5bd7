"""Fast-dLLM's per-row scores and commit rules (NVlabs/Fast-dLLM llada/generate.py,
`get_transfer_index` and, from revision f6b35ec, `get_transfer_index_dynamic`), over a batch of
rows: one step of many sequences runs as one set of kernels.

Everything here works on each sequence's current block: `logits` [B, n, V] for the blocks' n
positions, `conf` [B, n] with -inf outside each row's scope (the positions of its block that are
still masked). The published code scores the whole canvas row with -inf outside the block;
restricting to the block picks the same positions (up to the order of exactly equal float64
confidences). `transfer_mask` is the same rule for one row. The threshold rule itself (top-1,
then everything above the threshold) is shared with Nemotron and lives in `dserve.sampling`.
"""

from __future__ import annotations

import torch

from dserve.sampling import gumbel_argmax, keep_best, rank_by_confidence, top1_and_threshold_count


def predict_rows(
    logits: torch.Tensor,
    *,
    temperatures: list[float],
    remasking: str,
    mask_id: int,
    generators: list[torch.Generator],
    chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions x0 [B, n] and their confidences [B, n] for blocks' logits [B, n, V] of rows
    sharing one remasking mode.

    x0 = argmax of the (Gumbel-noised at T > 0, float64) logits, each row drawing from its own
    generator what it would draw alone; confidence = float64 softmax of the un-noised logits at x0
    ('low_confidence', over `chunk` rows at a time to bound its B x n x V doubles), or uniform
    float32 noise ('random').
    Deviation: the mask token itself is never predicted. The published code may pick it, and
    then "commits" a mask (a no-op that can keep a block from ever finishing); a served model
    essentially never ranks it first, so outputs agree whenever the published code terminates.
    """
    candidates = logits.clone()
    candidates[..., mask_id] = -float("inf")
    x0 = candidates.argmax(dim=-1)
    for r, temperature in enumerate(temperatures):
        if temperature != 0:
            x0[r] = gumbel_argmax(candidates[r], temperature, generators[r])
    if remasking == "low_confidence":
        conf = torch.cat(
            [
                torch.softmax(logits[i : i + chunk].to(torch.float64), dim=-1).gather(-1, x0[i : i + chunk, :, None]).squeeze(-1)
                for i in range(0, logits.shape[0], chunk)
            ]
        )
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
    """Which block positions each row commits [B, w] (bool), from confidences [B, w] (-inf outside
    each row's scope) and the scope sizes n [B]. Per row one rule applies, in the precedence
    factor > threshold > quota; `threshold` and `factor` [B] are NaN where a row does not use them,
    `quota` [B] is its fixed number of tokens. With confidences sorted descending, c(0) >= c(1):

    - quota: the first min(quota, n);
    - threshold (the published rule): the first one unconditionally, then every other with
      c >= threshold;
    - factor (f6b35ec): bar(0) = -1, bar(r) = 1 - factor / (r + 2); k = the first rank whose
      confidence is below its bar; no failing rank, or only the last one failing (a quirk kept
      as published), commits all n.

    Runs on the device without a host sync."""
    values, order = rank_by_confidence(conf)
    width = conf.shape[-1]
    ranks = torch.arange(width, device=conf.device)
    in_scope = ranks[None, :] < n[:, None]
    k_quota = torch.minimum(quota, n)
    k_threshold = top1_and_threshold_count(values, n, threshold)
    bars = 1.0 - factor[:, None].to(torch.float64) / (ranks[None, :].to(torch.float64) + 2.0)
    bars[:, 0] = -1.0
    fails = (values < bars) | ~in_scope
    fails = torch.cat([fails, torch.ones_like(fails[:, :1])], dim=-1)
    first = fails.to(torch.int8).argmax(-1)  # lowest failing rank; n when none fails
    k_factor = torch.where(first >= n - 1, n, first.clamp(min=1))
    k = torch.where(~factor.isnan(), k_factor, torch.where(~threshold.isnan(), k_threshold, k_quota))
    return keep_best(order, k)


def transfer_mask(
    conf: torch.Tensor,
    n: int,
    *,
    quota: int | None = None,
    threshold: float | None = None,
    factor: float | None = None,
) -> torch.Tensor:
    """`transfer_masks` for one row: conf [w], scope size n; rules given as numbers or None."""
    nan = float("nan")
    per_row = torch.tensor(
        [[n, n if quota is None else quota, nan if threshold is None else threshold, nan if factor is None else factor]],
        dtype=torch.float64,
        device=conf.device,
    )
    return transfer_masks(
        conf[None], per_row[:, 0].long(), quota=per_row[:, 1].long(), threshold=per_row[:, 2], factor=per_row[:, 3]
    )[0]


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
