"""Log-probabilities of committed tokens: what `logprobs` / `top_logprobs` report.

A token's log-probability is the one the model gave it at the step that committed it: the
log-softmax of the logits the runner decided with (after classifier-free guidance, before
temperature, as vLLM reports the model's own distribution), with the `top_n` most likely tokens
of that position. Runners that fill `StepResult.logprobs` set `reports_logprobs = True`.
"""

from __future__ import annotations

import torch

# (the token's log-probability, its position's top alternatives {token id: log-probability});
# a runner reports None for a token it committed without predicting it (dInfer's early-stop fill)
TokenLogprob = tuple[float, dict[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top_n: int) -> list[TokenLogprob | None]:
    """Per committed token: logits [k, V] of the positions, tokens [k], top_n >= 0 alternatives."""
    if logits.shape[0] == 0:
        return []
    logp = torch.log_softmax(logits.float(), dim=-1)
    own = logp.gather(-1, tokens.reshape(-1, 1).to(logp.device)).squeeze(-1).tolist()
    if top_n <= 0:
        return [(v, {}) for v in own]
    values, ids = logp.topk(min(top_n, logp.shape[-1]), dim=-1)
    return [(v, dict(zip(i, t))) for v, i, t in zip(own, ids.tolist(), values.tolist())]


def committed_logprobs(
    top_n: int | None, committed: list[tuple[int, int]], logits: torch.Tensor, first_offset: int = 0
) -> list[TokenLogprob | None] | None:
    """`StepResult.logprobs` for a step's commits: `logits` [k, V] hold generation offset
    `first_offset` at row 0 (a runner's block or region logits); None when not asked."""
    if top_n is None or not committed:
        return None
    rows = [offset - first_offset for offset, _ in committed]
    tokens = torch.tensor([t for _, t in committed], dtype=torch.long)
    return token_logprobs(logits[rows], tokens, top_n)
