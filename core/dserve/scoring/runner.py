"""The scoring runners: step-wise like the decoding runners, so the scheduler admits, batches,
times out and cancels scoring sequences as it does generations, and every forward goes through
the core's `dserve.batch.forward`.

A step forwards, for every admitted sequence while the step's token budget lasts, its next
piece of work as rows: a Monte Carlo mini-batch (b masked copies of context + continuation, and
their unconditional copies with guidance) and/or one step of the greedy check; the
autoregressive scorer forwards the whole pair once, causally. Sequences of any lengths share
a forward (rows right-padded, pads hidden from attention). Nothing in a sequence's state changes
before the forward has returned, so a step that runs out of memory can be retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch

from dserve.batch import Row
from dserve.engine import AlgorithmRunner, StepResult
from dserve.scoring.monte_carlo import MaskedBatch, copy_losses, draw_batches, estimate, guided
from dserve.scoring.params import DEFAULT_SEED, ScoringParams
from dserve.scoring.sequence import ScoreResult, ScoreSequence
from dserve.sequence import Sequence

# input tokens per scoring forward (at least one sequence's piece always runs)
TOKENS_PER_STEP = 65536


def _params(seq: Sequence) -> ScoringParams:
    return cast(ScoringParams, seq.params)


def _score_seq(seq: Sequence) -> ScoreSequence:
    return cast(ScoreSequence, seq)


@dataclass
class _MonteCarloState:
    tokens: torch.Tensor  # [L] context + continuation, on the device
    target: torch.Tensor  # [T] the continuation, on the device
    batches: list[MaskedBatch]  # still to forward
    losses: list[list[float]] = field(default_factory=list)  # per forwarded mini-batch, per copy
    greedy_canvas: torch.Tensor | None = None  # the greedy check's canvas, None when not asked / done
    greedy_steps_left: int = 0
    is_greedy: bool | None = None
    nfe: int = 0


class MonteCarloScorer(AlgorithmRunner):
    """LLaDA's published estimator and greedy check, for mask predictors (LLaDA, Dream)."""

    def init_state(self, seq: Sequence) -> _MonteCarloState:
        s, p = _score_seq(seq), _params(seq)
        device = self.model.device
        tokens = torch.tensor(s.prompt_ids, dtype=torch.long, device=device)
        target = tokens[s.context_len :]
        seed = DEFAULT_SEED if seq.seed is None else seq.seed
        st = _MonteCarloState(tokens, target, draw_batches(p.mc_num, p.batch_size, len(target), seed))
        if p.check_greedy:
            st.greedy_canvas = tokens.clone()
            st.greedy_canvas[s.context_len :] = self.model.info.mask_id
            st.greedy_steps_left = len(target)
        return st

    def _pieces(self, seq: ScoreSequence) -> tuple[MaskedBatch | None, bool]:
        st: _MonteCarloState = seq.engine_state
        return (st.batches[0] if st.batches else None), st.greedy_canvas is not None

    def _rows(self, seq: ScoreSequence, batch: MaskedBatch | None, greedy: bool) -> list[Row]:
        st: _MonteCarloState = seq.engine_state
        mask_id = self.model.info.mask_id
        span = (seq.context_len, len(st.tokens))
        canvases: list[torch.Tensor] = []
        if batch is not None:
            noisy = st.tokens.repeat(batch.is_mask.shape[0], 1)
            noisy[:, seq.context_len :].masked_fill_(batch.is_mask.to(noisy.device), mask_id)
            canvases.extend(noisy.unbind(0))
        if greedy:
            assert st.greedy_canvas is not None
            canvases.append(st.greedy_canvas)
        if _params(seq).cfg_scale > 0:  # the unconditional copies: the context masked out
            un = [c.clone() for c in canvases]
            for c in un:
                c[: seq.context_len] = mask_id
            canvases.extend(un)
        return [Row(c, logits=span) for c in canvases]

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = [_score_seq(s) for s in self.sequences]
        planned: list[tuple[ScoreSequence, MaskedBatch | None, bool, list[Row]]] = []
        budget = TOKENS_PER_STEP
        for seq in seqs:
            batch, greedy = self._pieces(seq)
            rows = self._rows(seq, batch, greedy)
            cost = sum(r.width for r in rows)
            if planned and cost > budget:
                break
            budget -= cost
            planned.append((seq, batch, greedy, rows))
        logits = iter(self.forward([r for _, _, _, rows in planned for r in rows]))
        results: dict[int, StepResult] = {}
        for seq, batch, greedy, rows in planned:
            outs = [next(logits) for _ in rows]
            if _params(seq).cfg_scale > 0:
                half = len(outs) // 2
                outs = [guided(c, u, _params(seq).cfg_scale) for c, u in zip(outs[:half], outs[half:])]
            results[seq.seq_id] = self._commit(seq, batch, greedy, outs, nfe=len(rows))
        return [results.get(s.seq_id) or StepResult(s, nfe=0) for s in seqs]

    def _commit(
        self, seq: ScoreSequence, batch: MaskedBatch | None, greedy: bool, outs: list[torch.Tensor], nfe: int
    ) -> StepResult:
        st: _MonteCarloState = seq.engine_state
        st.nfe += nfe
        if batch is not None:
            n = batch.is_mask.shape[0]
            st.losses.append(copy_losses(torch.stack(outs[:n]), st.target, batch).tolist())
            st.batches.pop(0)
        if greedy:
            self._greedy_step(seq, outs[-1])
        finished = not st.batches and st.greedy_canvas is None
        if finished:
            value, stderr = estimate(st.losses)
            seq.result = ScoreResult(value, st.is_greedy, stderr, st.nfe)
        return StepResult(seq, finished=finished, nfe=nfe)

    def _greedy_step(self, seq: ScoreSequence, logits: torch.Tensor) -> None:
        """One step of eval_llada.py's `suffix_greedy_prediction`: the most confident masked
        position takes its argmax. A committed token that differs from the continuation settles
        the answer (no later step can change it), so the check stops there."""
        st: _MonteCarloState = seq.engine_state
        canvas = st.greedy_canvas
        assert canvas is not None
        cont = canvas[seq.context_len :]
        masked = (cont == self.model.info.mask_id).nonzero().squeeze(-1)
        chosen = logits[masked]
        x0 = chosen.argmax(-1)
        confidence = torch.softmax(chosen.float(), dim=-1).gather(-1, x0[:, None]).squeeze(-1)
        best = int(torch.sort(confidence, descending=True, stable=True).indices[0])
        position = int(masked[best])
        cont[position] = x0[best]
        st.greedy_steps_left -= 1
        wrong = int(x0[best]) != int(st.target[position]) and int(x0[best]) != self.model.info.mask_id
        if wrong or st.greedy_steps_left == 0:
            st.is_greedy = bool(torch.equal(cont, st.target))
            st.greedy_canvas = None


class AutoregressiveScorer(AlgorithmRunner):
    """Exact log-probabilities in a model's autoregressive mode (causal attention, the logit at
    position i predicts token i + 1: Nemotron-Labs-Diffusion's `ar_generate`)."""

    def init_state(self, seq: Sequence) -> torch.Tensor:
        return torch.tensor(seq.prompt_ids, dtype=torch.long, device=self.model.device)

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = [_score_seq(s) for s in self.sequences]
        planned: list[ScoreSequence] = []
        budget = TOKENS_PER_STEP
        for seq in seqs:
            if planned and seq.prompt_len > budget:
                break
            budget -= seq.prompt_len
            planned.append(seq)
        rows = [Row(s.engine_state, causal=True, logits=(s.context_len - 1, s.prompt_len - 1)) for s in planned]
        results: dict[int, StepResult] = {}
        for seq, logits in zip(planned, self.forward(rows)):
            target = seq.engine_state[seq.context_len :]
            logp = torch.log_softmax(logits.float(), dim=-1)
            values = logp.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool(torch.equal(logits.argmax(-1), target)) if _params(seq).check_greedy else None
            seq.result = ScoreResult(float(values.sum()), greedy, None, nfe=1)
            if seq.top_n is not None:
                seq.result.token_logprobs = values.tolist()
                seq.result.top_logprobs = top_alternatives(logp, seq.top_n)
            results[seq.seq_id] = StepResult(seq, finished=True, nfe=1)
        return [results.get(s.seq_id) or StepResult(s, nfe=0) for s in seqs]


def top_alternatives(logp: torch.Tensor, n: int) -> list[dict[int, float]]:
    """Per row of log-probabilities [k, V]: its n most likely tokens and their log-probabilities."""
    if n <= 0:
        return [{} for _ in range(logp.shape[0])]
    values, ids = logp.topk(n, dim=-1)
    return [dict(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


@dataclass
class _LeftToRightState:
    tokens: torch.Tensor  # [n] the whole text
    pending: list[int]  # positions still to score, in order
    values: dict[int, float] = field(default_factory=dict)
    top: dict[int, dict[int, float]] = field(default_factory=dict)
    nfe: int = 0


class LeftToRightScorer(AlgorithmRunner):
    """Per-token values for a mask predictor (the `echo`/`logprobs` shape of /v1/completions):
    token i gets log p(x_i | x_<i) read at position i of a canvas that holds x_<i and masks up to
    the text's end. The values of a span sum to its log-probability under the left-to-right
    decoding order (one order of the many the Monte Carlo estimator averages over); one forward
    per token, all of a text's rows in as few steps as the token budget allows."""

    def init_state(self, seq: Sequence) -> _LeftToRightState:
        s = _score_seq(seq)
        tokens = torch.tensor(s.prompt_ids, dtype=torch.long, device=self.model.device)
        return _LeftToRightState(tokens, list(range(max(1, s.context_len), s.prompt_len)))

    def _row(self, st: _LeftToRightState, position: int) -> Row:
        canvas = st.tokens.clone()
        canvas[position:] = self.model.info.mask_id
        return Row(canvas, logits=(position, position + 1))

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = [_score_seq(s) for s in self.sequences]
        planned: list[tuple[ScoreSequence, list[int]]] = []
        budget = TOKENS_PER_STEP
        for seq in seqs:
            st: _LeftToRightState = seq.engine_state
            take = min(len(st.pending), budget // seq.prompt_len)
            if not planned:
                take = min(len(st.pending), max(1, take))  # the first sequence always makes progress
            elif take == 0 and st.pending:
                break
            budget -= take * seq.prompt_len
            planned.append((seq, st.pending[:take]))
        rows = [self._row(seq.engine_state, i) for seq, positions in planned for i in positions]
        logits = iter(self.forward(rows))
        results: dict[int, StepResult] = {}
        for seq, positions in planned:
            st = seq.engine_state
            if positions:
                logp = torch.log_softmax(torch.cat([next(logits) for _ in positions]).float(), dim=-1)
                values = logp.gather(-1, st.tokens[positions][:, None]).squeeze(-1).tolist()
                st.values.update(zip(positions, values))
                st.top.update(zip(positions, top_alternatives(logp, seq.top_n or 0)))
                del st.pending[: len(positions)]
            st.nfe += len(positions)
            finished = not st.pending
            if finished:
                order = sorted(st.values)
                seq.result = ScoreResult(
                    sum(st.values.values()),
                    all(max(st.top[i].values(), default=st.values[i]) <= st.values[i] for i in order) if seq.top_n else None,
                    None,
                    st.nfe,
                    [st.values[i] for i in order],
                    [st.top[i] for i in order],
                )
            results[seq.seq_id] = StepResult(seq, finished=finished, nfe=len(positions))
        return [results.get(s.seq_id) or StepResult(s, nfe=0) for s in seqs]
