"""dInfer's commit rules for one sequence's block (decoding/parallel_strategy.py@fce4e32).

Each rule takes the block's logits [Lb, V] and the block's tokens [Lb] and returns (x0, commit):
the predicted token per slot and which masked slots to commit. The arithmetic follows the
published code operation for operation (dtypes, the 1e-5 band, strict vs non-strict comparisons,
lowest-index ties of argmax/max), so temperature-0 output equals the published decoders token for
token. The published functions work on a [B, Lb, V] batch; these are the same operations on one
row (dInfer's decoders treat rows independently, and HierarchyDecoder asserts B = 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dserve.sampling import gumbel_argmax


def threshold_rule(
    logits: torch.Tensor,
    block: torch.Tensor,
    mask_id: int,
    threshold: float,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`get_transfer_index_threshold` (rm_mask=True, use_float64=False).

    Scope = masked slots whose prediction is not the mask token. Commit every scope slot whose
    float32 confidence is >= min(max confidence - 1e-5, threshold): so all slots >= threshold when
    the best clears it, otherwise every slot within 1e-5 of the best (ties all commit).
    """
    masked = block == mask_id
    x0 = gumbel_argmax(logits, temperature, generator)
    p = F.softmax(logits.to(torch.float32), dim=-1)
    x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    scope = masked & (x0 != mask_id)
    x0 = torch.where(scope, x0, block)
    confidence = torch.where(scope, x0_p, -float("inf"))
    actual = (confidence.max() - 1e-5).clamp(-1000, threshold)
    commit = (confidence >= actual) & masked
    return x0, commit


def hierarchy_rule(
    logits: torch.Tensor,
    block: torch.Tensor,
    mask_id: int,
    threshold: float | None,
    low_threshold: float | None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`HierarchyDecoder.get_transfer_index`.

    Confidence = exp(log_softmax) of the prediction, in the logits' dtype. In every run of
    consecutive masked slots, the slots equal to the run's best, kept only if > low_threshold;
    or-ed with every slot > threshold and with the block's best slot (lowest index); and-ed with
    masked. A slot predicting the mask token may be "committed" (it stays masked), as published.
    """
    masked = block == mask_id
    L = masked.shape[0]
    x0 = gumbel_argmax(logits, temperature, generator)
    x0_p = F.log_softmax(logits, dim=-1).gather(-1, x0.unsqueeze(-1)).squeeze(-1).exp()
    neg = torch.finfo(x0_p.dtype).min
    confidence = torch.where(masked, x0_p, torch.tensor(neg, device=x0_p.device, dtype=x0_p.dtype))
    prev = torch.cat([masked.new_zeros(1), masked[:-1]])
    starts = masked & ~prev
    seg_id = torch.cumsum(starts.to(torch.int64), dim=-1) - 1
    seg_id = torch.where(masked, seg_id, 0)
    seg_max = torch.full((L,), neg, device=confidence.device, dtype=confidence.dtype)
    seg_max = torch.scatter_reduce(seg_max, 0, seg_id, confidence, reduce="amax", include_self=True)
    commit = confidence == seg_max.gather(0, seg_id)
    if low_threshold is not None:
        commit = commit & (confidence > low_threshold)
    if threshold is not None:
        commit = commit | (confidence > threshold)
    top1 = torch.arange(L, device=confidence.device) == torch.argmax(confidence)  # no host read of the index
    commit = (commit | top1) & masked
    return x0, commit


class CreditState:
    """`CreditThresholdParallelDecoder._apply_credit_fusion` for one sequence.

    One credit matrix C [Lb, V] (float32) per block, keyed by the block's (start, end) as published;
    a new key starts from zeros. Every decode call (no-op ones included): C *= beta unless it is the
    key's first call; C[i, top-1 token] += top-1 probability ** gamma at masked slots; the rule then
    runs on logits + alpha * log(C + 1).
    """

    def __init__(self, alpha: float, gamma: float, beta: float):
        self.alpha, self.gamma, self.beta = alpha, gamma, beta
        self.key: tuple[int, int] | None = None
        self.mat: torch.Tensor | None = None
        self.iters = 0

    def fuse(self, logits: torch.Tensor, masked: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
        if self.key != key or self.mat is None or self.mat.shape != logits.shape or self.mat.device != logits.device:
            self.key = key
            self.mat = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
            self.iters = 0
        mat = self.mat
        if self.iters > 0:
            mat.mul_(self.beta)
        probs = F.softmax(logits.to(torch.float32), dim=-1)
        top1_probs, top1_idx = torch.max(probs, dim=-1)
        enhanced = top1_probs.pow(self.gamma).to(mat.dtype)
        update = enhanced * masked.to(enhanced.dtype)
        mat.scatter_add_(1, top1_idx.unsqueeze(-1), update.unsqueeze(-1))
        self.iters += 1
        return logits + self.alpha * torch.log(mat + 1)

    def clear(self) -> None:
        self.key, self.mat, self.iters = None, None, 0


def force_progress(logits: torch.Tensor, block: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Guard (not in dInfer): the slot and token to commit when a rule committed no real token.

    That happens when every candidate slot predicts the mask token; the published loop then makes
    no progress and, at temperature 0, never ends. We commit the most probable non-mask token of
    the masked slot where it is most probable (lowest index on ties). Returns (slot [Lb] bool,
    one-hot, all False when no slot is masked; tokens [Lb], each slot's best non-mask token), on
    the device without a host sync: the caller applies it only where no progress was made.
    """
    masked = block == mask_id
    l32 = logits.to(torch.float32)
    probs = F.softmax(l32, dim=-1)
    probs[:, mask_id] = -1.0
    p, tok = probs.max(dim=-1)
    p = torch.where(masked, p, -float("inf"))
    slots = torch.arange(p.shape[0], device=p.device)
    slot = (slots == torch.argmax(p)) & masked
    return slot, tok


def soft_embeddings(
    embedding: torch.nn.Embedding,
    tokens: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    weight: float,
    tau: float = 1.0,
) -> torch.Tensor:
    """dInfer's `H2Embed` (model/modeling_fused_olmoe.py): emb(x), and at masked slots
    emb(x) + weight * softmax(logits / tau) @ W_emb (no renormalisation)."""
    base = embedding(tokens)
    prob = torch.softmax(logits / tau, dim=-1)
    soft = prob @ embedding.weight
    return torch.where(masked.unsqueeze(-1), weight * soft + 1 * base, base)
