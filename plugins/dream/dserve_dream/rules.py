"""Dream's per-position predictions and confidences (`sample_tokens`, `top_p_logits`,
`top_k_logits` of the published generation_utils.py), on one row's masked positions.

Order as published: logits / temperature (T > 0), top-p, top-k (both fill with the dtype's
minimum), softmax in the logits' dtype; x0 = a categorical sample (T > 0) or argmax of the
probabilities (T = 0, which can differ from the logit argmax when two probabilities round to the
same value); confidence = p[x0], or top-1 minus top-2 probability (topk_margin), or the negative
entropy sum p log(p + 1e-10) (entropy). Sampling uses the sequence's generator the way the
published code uses the global one, so a seeded batch-of-one run draws the same numbers.
"""

from __future__ import annotations

import torch

MARGIN = "topk_margin"
ENTROPY = "entropy"


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses top_p
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    top_k = min(top_k, logits.size(-1))
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    generator: torch.Generator,
    confidence: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences [n] and tokens [n] for logits [n, V]."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    conf: torch.Tensor | None = None
    x0: torch.Tensor | None = None
    if temperature > 0 and len(probs):
        try:
            # torch.distributions.Categorical(probs).sample(): normalise, then one draw per row
            x0 = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, True, generator=generator).squeeze(-1)
            conf = probs.gather(-1, x0[:, None]).squeeze(-1)
        except RuntimeError:  # the published code falls back to argmax (e.g. non-finite probs)
            x0 = None
    if x0 is None:
        conf, x0 = probs.max(dim=-1)
    if confidence == MARGIN:
        top2 = torch.sort(probs, dim=-1, descending=True)[0][:, :2]
        conf = top2[:, 0] - top2[:, 1]
    elif confidence == ENTROPY:
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    assert conf is not None  # set together with x0 above (drawn, or the argmax fallback)
    return conf, x0
