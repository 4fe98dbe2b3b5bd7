"""The pieces of LLaDA's published likelihood estimator (ML-GSAI/LLaDA `get_log_likelihood.py`,
`eval_llada.py`), as functions the scoring runner plans and commits with.

`forward_process` masks a mini-batch of b copies of the continuation: a random k in [1, T], the
mask counts x_i = round(linspace(k, k + (b-1)·T/b)) wrapped into [1, T] (stratified over the
batch), each copy's x_i masked positions a random permutation's first x_i. Each copy's loss is
the cross-entropy at its masked positions divided by its mask ratio x_i / T; the estimate of
log p(continuation | context) is minus the mean of the mini-batch means.

Random draws come from the request's own CPU generator in the published order (k, then one
permutation per copy, mini-batch after mini-batch): with `torch.manual_seed(seed)` the published
code draws the same numbers on a CPU. (On a GPU it draws k from the CUDA generator, so its
stream differs; the estimator's distribution does not.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class MaskedBatch:
    """One mini-batch of masked copies: which continuation positions are masked and the ratio."""

    is_mask: torch.Tensor  # [b, T] bool
    ratio: torch.Tensor  # [b] float32: x_i / T


def forward_process(batch_size: int, target_len: int, generator: torch.Generator) -> MaskedBatch:
    """The published `forward_process` over the continuation only (the context is never masked)."""
    b, t = batch_size, target_len
    k = torch.randint(1, t + 1, (), generator=generator)
    x = torch.round(torch.linspace(float(k), float(k + (b - 1) * (t / b)), steps=b)).long()
    x = ((x - 1) % t) + 1
    indices = torch.arange(t).repeat(b, 1)
    is_mask = indices < x.unsqueeze(1)
    for i in range(b):
        is_mask[i] = is_mask[i][torch.randperm(t, generator=generator)]
    return MaskedBatch(is_mask, (x / t).to(torch.float32))


def draw_batches(mc_num: int, batch_size: int, target_len: int, seed: int) -> list[MaskedBatch]:
    """Every mini-batch of one estimate, drawn up front (a step that runs out of memory and is
    retried must see the same masks)."""
    generator = torch.Generator().manual_seed(seed)
    return [forward_process(batch_size, target_len, generator) for _ in range(mc_num // batch_size)]


def guided(cond: torch.Tensor, uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """The published unsupervised classifier-free guidance: un + (cfg + 1)(cond - un)."""
    if uncond is None:
        return cond
    return uncond + (cfg_scale + 1) * (cond - uncond)


def copy_losses(logits: torch.Tensor, target: torch.Tensor, batch: MaskedBatch) -> torch.Tensor:
    """Per copy [b]: the sum over its masked positions of cross-entropy / mask ratio.
    logits [b, T, V] at the continuation's positions, target [T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    ce = -logp.gather(-1, target.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)  # [b, T]
    ratio = batch.ratio.to(ce.device)
    return (ce / ratio[:, None]).masked_fill(~batch.is_mask.to(ce.device), 0.0).sum(-1)


def estimate(copy_loss_batches: list[list[float]]) -> tuple[float, float | None]:
    """(log-likelihood estimate, its standard error) from the copies' losses, mini-batch by
    mini-batch. The estimate is the published one: minus the mean of the mini-batch means. The
    standard error treats the mc_num copies as independent draws: sample standard deviation over
    sqrt(mc_num) (the copies of a mini-batch are stratified, which only lowers the true error);
    None with a single copy."""
    means = [sum(batch) / len(batch) for batch in copy_loss_batches]
    value = -sum(means) / len(means)
    copies = [c for batch in copy_loss_batches for c in batch]
    n = len(copies)
    if n < 2:
        return value, None
    mean = sum(copies) / n
    var = sum((c - mean) ** 2 for c in copies) / (n - 1)
    return value, math.sqrt(var / n)
