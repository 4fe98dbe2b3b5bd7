"""The published per-step unmasking rule of Nemotron block diffusion (`get_transfer_index` of the
public chat_utils.py, remasking 'low_confidence'), for one sequence's block.

x0 = argmax of the logits (Gumbel-noised in float64 at T > 0); confidence = softmax of the raw
logits at x0, in the logits' dtype (bf16 on a GPU, as published: not upcast). Scope = the
block's masked positions. With a threshold: the most confident position in scope plus every
other one with confidence >= threshold. Without: the `quota` most confident ones. Equal
confidences are taken lowest position first (a stable sort), where the published `topk` leaves
the order to the platform. The rule itself is `dserve.sampling.top_confident`, shared with
Fast-dLLM.
"""

from __future__ import annotations

import torch

from dserve.sampling import gumbel_argmax, top_confident


def unmask_step(
    logits: torch.Tensor,
    block: torch.Tensor,
    *,
    mask_id: int,
    temperature: float,
    generator: torch.Generator,
    threshold: float | None,
    quota: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 [n], which positions to commit [n] bool) for a block's logits [n, V] and tokens [n]."""
    masked = block == mask_id
    x0 = gumbel_argmax(logits, temperature, generator)
    conf = torch.softmax(logits, dim=-1).gather(-1, x0[:, None]).squeeze(-1)
    conf = torch.where(masked, conf, torch.tensor(-float("inf"), dtype=conf.dtype, device=conf.device))
    return x0, top_confident(conf, threshold=threshold, quota=quota)
