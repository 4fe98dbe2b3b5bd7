"""Dream's `diffusion_generate` (HF Dream-org/Dream-v0-Instruct-7B generation_utils.py) as a
step-wise runner, one subclass per `alg`.

Per sequence: canvas = prompt + max_tokens masks, no blocks. The schedule is
t = linspace(1, eps, steps + 1) in float32. Step i forwards the whole canvas and, on the masked
positions, predicts tokens with confidences (rules.py), then commits:
- `origin`: every masked position independently with probability 1 - t[i+1]/t[i] (all on the
  last step), drawn with the sequence's generator;
- the others: n = int(masked * (1 - t[i+1]/t[i])) (float32, all at the last step) positions,
  the n most confident (`alg_temp` 0 / null) or n drawn from softmax(confidence / alg_temp).

Deliberate difference from the published loop, for batch invariance: `masked` is the row's own
count, where the published code averages it over the batch (equal for every row when, as in its
demos, all prompts are padded to one length and get the same number of new tokens). The
published loop runs exactly `steps` forwards; a sequence here finishes as soon as its canvas has
no mask, and at temperature 0 a step that will commit nothing (n = 0, or no origin draw hit)
skips the forward (NFE 0): neither changes any token. Confidence selection runs over the whole
canvas row with -inf outside the masks, as published, so equal confidences resolve the same way.

Batching: canvases of any length share one forward (the core's `dserve.batch.forward`:
right-padded, pads hidden from attention); everything after the forward is per row, so outputs do not depend on batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict, cast

import torch

from dserve.batch import Row
from dserve.engine import AlgorithmRunner, StepResult
from dserve.logprobs import token_logprobs
from dserve.sampling import make_generator, request_seed
from dserve.sequence import Sequence
from dserve_dream.params import DreamParams
from dserve_dream.rules import ENTROPY, MARGIN, sample


@dataclass
class _State:
    canvas: torch.Tensor  # [prompt_len + gen_length] token ids
    generator: torch.Generator
    timesteps: torch.Tensor  # [steps + 1] float32, on the CPU
    steps: int
    step: int = 0
    masked: int = 0  # masked positions left


@dataclass
class _Plan:
    """What a sequence's next step commits, decided before the forward where possible."""

    count: int = 0  # confidence algorithms: how many positions
    chosen: torch.Tensor | None = None  # origin: which masked positions (bool over them)

    @property
    def commits(self) -> bool:
        return self.count > 0 if self.chosen is None else bool(self.chosen.any())


class _SampleOptions(TypedDict):
    """The keyword arguments `_commit` passes to rules.sample."""

    temperature: float
    top_p: float | None
    top_k: int | None
    generator: torch.Generator


def _params(seq: Sequence) -> DreamParams:
    """The sequence's parameters as this plugin's model (Sequence types them DecodingParams; the
    service validates each request with its algorithm's own params model)."""
    return cast(DreamParams, seq.params)


class DreamRunner(AlgorithmRunner):
    graphable = True
    reports_logprobs = True
    random_positions = False  # origin: positions drawn at random instead of ranked
    confidence: str | None = None  # which confidence ranks positions (None: top-1 probability)

    def init_state(self, seq: Sequence) -> _State:
        p = _params(seq)
        device = self.model.device
        canvas = self.new_canvas(seq)
        steps = p.total_steps(seq.gen_length)
        return _State(
            canvas=canvas,
            generator=make_generator(request_seed(seq.seed, p.temperature), device),
            timesteps=torch.linspace(1, p.eps, steps + 1, dtype=torch.float32),
            steps=steps,
            masked=seq.gen_length,
        )

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = list(self.sequences)
        plans = {s.seq_id: self._plan(s) for s in seqs}
        # at T > 0 the published loop samples every step (drawing random numbers) even when it
        # commits nothing, so only greedy steps that commit nothing may skip the forward
        run = [s for s in seqs if s.engine_state.masked and (plans[s.seq_id].commits or s.params.temperature > 0)]
        logits = self._forward(run) if run else {}
        results = []
        for seq in seqs:
            st: _State = seq.engine_state
            committed: list[tuple[int, int]] = []
            logprobs = None
            if seq.seq_id in logits:
                committed = self._commit(seq, plans[seq.seq_id], logits[seq.seq_id])
                if seq.logprobs is not None and committed:
                    offsets, tokens = zip(*committed)
                    logprobs = token_logprobs(logits[seq.seq_id][list(offsets)], torch.tensor(tokens), seq.logprobs)
            st.masked -= len(committed)
            st.step += 1
            finished = st.step >= st.steps or st.masked == 0
            results.append(StepResult(seq, committed, finished, nfe=int(seq.seq_id in logits), logprobs=logprobs))
        return results

    # ---- the schedule ------------------------------------------------------------------------

    def _plan(self, seq: Sequence) -> _Plan:
        st: _State = seq.engine_state
        t, s = st.timesteps[st.step], st.timesteps[st.step + 1]
        last = st.step == st.steps - 1
        if self.random_positions:
            p_transfer = 1.0 if last else 1 - s / t
            chosen = torch.rand(st.masked, generator=st.generator, device=st.canvas.device) < p_transfer
            return _Plan(chosen=chosen)
        masked = torch.tensor(st.masked, dtype=torch.float32)  # the published float32 count
        return _Plan(count=int(masked) if last else int(masked * (1 - s / t)))

    # ---- forward -----------------------------------------------------------------------------

    def _forward(self, seqs: list[Sequence]) -> dict[int, torch.Tensor]:
        """Aligned logits [gen_length, V] of each sequence's generation region, keyed by seq_id."""
        rows = [Row(s.engine_state.canvas, logits=(s.prompt_len, len(s.engine_state.canvas))) for s in seqs]
        return {s.seq_id: logits for s, logits in zip(seqs, self.forward(rows))}

    # ---- commits -----------------------------------------------------------------------------

    def _commit(self, seq: Sequence, plan: _Plan, logits: torch.Tensor) -> list[tuple[int, int]]:
        st: _State = seq.engine_state
        p = _params(seq)
        mask_id = self.model.info.mask_id
        region = st.canvas[seq.prompt_len :]
        masked = region == mask_id
        where = masked.nonzero().squeeze(-1)  # generation offsets of the masked positions
        opts = _SampleOptions(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, generator=st.generator)
        if plan.chosen is not None:  # origin
            picked = where[plan.chosen]
            _, x0 = sample(logits[picked], **opts)
        else:
            conf, x0_all = sample(logits[where], confidence=self.confidence, **opts)
            if plan.count == 0:
                return []
            # the whole canvas row, -inf where nothing may be committed (as published)
            full = torch.full((len(st.canvas),), -torch.inf, dtype=logits.dtype, device=logits.device)
            full[seq.prompt_len + where] = conf
            if not p.alg_temp:
                chosen = torch.topk(full, plan.count).indices
            else:
                chosen = torch.multinomial(torch.softmax(full / p.alg_temp, dim=-1), plan.count, generator=st.generator)
            picked = chosen - seq.prompt_len
            by_offset = torch.full((len(region),), mask_id, dtype=torch.long, device=region.device)
            by_offset[where] = x0_all
            x0 = by_offset[picked]
        region[picked] = x0
        return list(zip(picked.tolist(), x0.tolist()))


class OriginRunner(DreamRunner):
    """`origin`: each masked position is committed independently at random."""

    random_positions = True


class MaskGitPlusRunner(DreamRunner):
    """`maskgit_plus`: the positions with the highest top-1 probability."""


class TopKMarginRunner(DreamRunner):
    """`topk_margin`: the positions with the largest top-1 minus top-2 probability."""

    confidence = MARGIN


class EntropyRunner(DreamRunner):
    """`entropy`: the positions with the lowest entropy."""

    confidence = ENTROPY
