"""dInfer's blockwise decoding (inclusionAI/dInfer@fce4e32, decoding/generate_uniform.py) as
step-wise runners.

One step = one dInfer *diffusion iteration* of every sequence in the batch. Per sequence:

- canvas = prompt + gen_length masks, in blocks of `block_length` starting at the prompt end (or,
  with `start_block_align`, at absolute multiples of block_length; the last block is clipped).
- Block loop (`BlockRunner.decode`): while the block has masks, run
  u = clamp(masks in block // expected_tpf, 1, maximum_unroll) iterations without checking for
  completion (iterations after the block is full commit nothing but still cost a forward and
  advance `iter_no`), then check again. After a block: with `early_stop`, a block holding EOS /
  end-of-turn ends the sequence and every later slot becomes EOS.
- Iteration manager (what is forwarded), chosen by `cache`:
  - none (`BaseDiffusionIteration`): the full canvas; decode the block.
  - prefix / dual (`BaseDiffusionIteration` with a `DiffusionKVCacheManager`): when the cache
    needs a refresh (new block, or `iter_no % cache_update_freq == 0`), first the full canvas,
    writing the cache, and decode from it; then `canvas[s:]` (prefix) or the block (dual) over the
    cache, and decode again (2 forwards, 2 decodes, `iter_no` + 1).
  - dual with prefix_look / after_look / warmup_steps (`VicinityCacheIteration`): while
    iter_no < warmup_steps the full canvas without cache; otherwise, with no cache yet or when
    the cache needs a refresh and the block is not the first, the full canvas writing the cache;
    then the window [s - prefix_look, e + after_look) over the cache; every decode advances
    `iter_no`.
  - soft (`IterationSmooth` / `IterSmoothWithVicinityCache`): the same schedules, but the model
    reads embeddings: masked slots carry emb(mask) + w_t * E_softmax[emb], w_t = min(init +
    growth * t, cont_weight), and iteration t commits at max(1 - t * threshold_decay, threshold).
- Decoders (rules.py): threshold, hierarchy, credit (per-block credit EMA).

Cached forwards write the K/V of their inputs into the sequence's cache row; the published code
keeps them out of the stored cache, but every cached forward rewrites its own input positions
before attending and every refresh rewrites the whole row, so what is read is the same.

Batching: sequences of any prompt length, block length, cache mode and parameters share a step.
A step makes at most three forwards: full canvases without cache (no-cache sequences and warmup
iterations), full canvases writing the cache (refreshes), and cached windows (the suffix, block
or vicinity window of every cached sequence, after the refreshes have been decoded). Each row is a
`dserve.batch.Row` (the forwarded range, attending to the whole canvas, over the sequence's cache
row when it writes one, logits only at the block, except for soft, whose embedding update needs
the whole forwarded range); the core's forward pads and masks them (pads write past the canvas
end, into slots nobody attends to). Everything else (iteration counter, unroll count, credit matrix,
soft embeddings, generator) is per sequence, so a sequence's output never depends on its
batch-mates. The published code counts unrolls over the whole batch and shares `iter_no`
between rows; that is the one intended deviation (see README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from dserve.batch import Row, readback
from dserve.engine import CachedRunner, StepResult
from dserve.logprobs import TokenLogprob, token_logprobs
from dserve.sampling import make_generator
from dserve.sequence import Sequence
from dserve_dinfer.params import CreditParams, DInferParams, HierarchyParams, SoftParams
from dserve_dinfer.rules import (
    CreditState,
    force_progress,
    hierarchy_rule,
    soft_embeddings,
    threshold_rule,
)

_FULL_PLAIN, _FULL_CACHE = "full", "refresh"


@dataclass
class _State:
    canvas: torch.Tensor  # [prompt_len + gen_length] token ids
    host: list[int]  # the canvas as the host last read it back (block bookkeeping needs no sync)
    prompt_len: int
    blocks: list[tuple[int, int]]  # [start, end) in canvas positions
    generator: torch.Generator
    early_stop: bool = True  # the algorithm's early_stop, off for ignore_eos requests
    block_id: int = 0
    iter_no: int = 0  # dInfer's diffusion-iteration counter, per sequence
    unroll_left: int = 0  # iterations left before the next completion check
    cache_row: int | None = None
    cache_built: bool = False  # dInfer: kv_cache.past_key_values is not None
    cache_block: tuple[int, int] | None = None  # the block the cache manager last recorded
    credit: CreditState | None = None
    embeds: torch.Tensor | None = None  # soft: [canvas, d] model input embeddings
    finished: bool = False
    committed: list[tuple[int, int]] = field(default_factory=list)  # this step, canvas positions
    logprobs: dict[int, TokenLogprob | None] = field(default_factory=dict)  # this step, by canvas position (when asked)
    decoded: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # this step: (s, progressed, new)
    nfe: int = 0  # this step
    forwards: list | None = None  # trace when record_forwards: [input length, [a, b] or None, uses the cache]

    @property
    def length(self) -> int:
        return self.canvas.shape[0]

    @property
    def block(self) -> tuple[int, int]:
        return self.blocks[self.block_id]


@dataclass
class _Plan:
    """What one iteration of one sequence forwards."""

    full: str | None = None  # _FULL_PLAIN / _FULL_CACHE / None
    window: tuple[int, int] | None = None  # cached forward of canvas[a:b]


def _params(seq: Sequence) -> DInferParams:
    """The sequence's parameters as this plugin's model (Sequence types them DecodingParams; the
    service validates each request with its algorithm's own params model)."""
    return cast(DInferParams, seq.params)


class DInferRunner(CachedRunner):
    """`dinfer_blockwise`: ThresholdParallelDecoder."""

    soft = False
    # each forward's logits are decoded before the next forward, and nothing keeps them
    graphable = True
    reports_logprobs = True
    record_forwards = False  # tests: keep a per-sequence trace of forwards

    # ---- admission / release ----------------------------------------------------------------

    def init_state(self, seq: Sequence) -> _State:
        p = _params(seq)
        mask_id = self.model.info.mask_id
        device = self.model.device
        L = seq.prompt_len + seq.gen_length
        canvas = self.new_canvas(seq)
        if p.start_block_align:
            # BlockIterator._get_first_block_start: non-mask prompt tokens, floored to a block
            first = sum(1 for t in seq.prompt_ids if t != mask_id) // p.block_length * p.block_length
        else:
            first = seq.prompt_len
        blocks = [(s, min(s + p.block_length, L)) for s in range(first, L, p.block_length)]
        host = list(seq.prompt_ids) + [mask_id] * seq.gen_length
        st = _State(
            canvas,
            host,
            seq.prompt_len,
            blocks,
            make_generator(seq.seed, device),
            early_stop=p.early_stop and not seq.ignore_eos,
        )
        if p.cache != "none":
            # + 1: the slot padded inputs write to (vicinity windows and suffixes differ in width
            # between sequences), reserved now so the cache never grows mid-run (dserve.batch)
            st.cache_row = self.take_cache_row(len(canvas) + 1)
        if self.record_forwards:
            st.forwards = []
        self._init_extra(seq, st)
        self._next_unroll(st, p)
        return st

    def _init_extra(self, seq: Sequence, st: _State) -> None:
        """Per-algorithm state (credit matrix, soft embeddings)."""

    # ---- one step ---------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[StepResult]:
        seqs = [s for s in self.sequences if not s.engine_state.finished]
        stepped = {s.seq_id for s in seqs}
        for seq in seqs:
            seq.engine_state.committed = []
            seq.engine_state.logprobs = {}
            seq.engine_state.decoded = []
            seq.engine_state.nfe = 0
        plans = {seq.seq_id: self._plan(seq) for seq in seqs}

        # full canvases: first the ones that need no cache, then the refreshes
        for kind in (_FULL_PLAIN, _FULL_CACHE):
            rows = [s for s in seqs if plans[s.seq_id].full == kind]
            if rows:
                spans = [(0, s.engine_state.length) for s in rows]
                for seq, (c, logits) in zip(rows, self._forward(rows, spans, cached=False, write=kind == _FULL_CACHE)):
                    self._after_full(seq, logits, c, kind)
        # cached windows, on the canvases the refreshes just updated
        rows = [s for s in seqs if plans[s.seq_id].window is not None]
        if rows:
            spans = [w for s in rows if (w := plans[s.seq_id].window) is not None]  # all rows: chosen for having one
            for seq, (a, b), (c, logits) in zip(rows, spans, self._forward(rows, spans, cached=True, write=True)):
                self._after_window(seq, logits, c, a, b)
        self._read_back(seqs)

        results = []
        for seq in self.sequences:
            st: _State = seq.engine_state
            if seq.seq_id in stepped:
                st.unroll_left -= 1
                if st.unroll_left == 0:
                    self._next_unroll(st, _params(seq))
            committed = sorted((pos - st.prompt_len, tok) for pos, tok in st.committed if pos >= st.prompt_len)
            # tokens filled after an early stop were never predicted: no log-probability (null)
            logprobs = None if seq.logprobs is None else [st.logprobs.get(o + st.prompt_len) for o, _ in committed]
            nfe = st.nfe if seq.seq_id in stepped else 0
            results.append(StepResult(seq, committed, st.finished, nfe=nfe, logprobs=logprobs))
        return results

    # ---- the iteration manager --------------------------------------------------------------

    def _require_update(self, st: _State, p: DInferParams) -> bool:
        """DiffusionKVCacheManager.require_update: new block, or every cache_update_freq
        iterations; records the block as a side effect."""
        block = st.block
        update = st.cache_block != block
        if p.cache_update_freq is not None:
            update = update or st.iter_no % p.cache_update_freq == 0
        st.cache_block = block
        return update

    def _plan(self, seq: Sequence) -> _Plan:
        st: _State = seq.engine_state
        p = _params(seq)
        s, e = st.block
        if p.cache == "none":
            return _Plan(full=_FULL_PLAIN)
        if p.vicinity:
            if st.iter_no < p.warmup_steps:
                return _Plan(full=_FULL_PLAIN)
            # `past_key_values is None or (require_update(...) and block_id > 0)`: the manager
            # records the block only when a cache already exists (short-circuit), as published.
            refresh = not st.cache_built or (self._require_update(st, p) and st.block_id > 0)
            window = (max(0, s - p.prefix_look), min(st.length, e + p.after_look))
            return _Plan(full=_FULL_CACHE if refresh else None, window=window)
        refresh = self._require_update(st, p)
        window = (s, st.length) if p.cache == "prefix" else (s, e)
        return _Plan(full=_FULL_CACHE if refresh else None, window=window)

    def _after_full(self, seq: Sequence, logits: torch.Tensor, c: int, kind: str) -> None:
        """Decode after a full-canvas forward; `logits` cover canvas positions [c, c + len)."""
        st: _State = seq.engine_state
        p = _params(seq)
        s, e = st.block
        self._decode(seq, logits[s - c : e - c])
        if kind == _FULL_CACHE:
            st.cache_built = True
        # BaseDiffusionIteration advances iter_no once per iteration, after its last decode;
        # the vicinity and soft managers after every decode.
        if p.cache == "none" or p.vicinity or self.soft:
            st.iter_no += 1

    def _after_window(self, seq: Sequence, logits: torch.Tensor, c: int, a: int, b: int) -> None:
        """Decode after a cached forward of canvas[a:b]; `logits` cover [c, c + len)."""
        st: _State = seq.engine_state
        s, e = st.block
        self._decode(seq, logits[s - c : e - c])
        st.iter_no += 1

    def _next_unroll(self, st: _State, p: DInferParams) -> None:
        """BlockRunner.decode's loop: completion check, early stop, next block, unroll count."""
        mask_id = self.model.info.mask_id
        while True:
            s, e = st.block
            masks = st.host[s:e].count(mask_id)
            if masks > 0:
                st.unroll_left = max(min(masks // p.expected_tpf, p.maximum_unroll), 1)
                return
            self._block_done(st)
            if st.early_stop and self._holds_stop(st.host[max(s, st.prompt_len) : e]):
                eos = self.model.info.eos_id
                filled = [i for i, t in enumerate(st.host[e:]) if t == mask_id]
                st.committed.extend((e + i, eos) for i in filled)
                st.canvas[e:] = eos
                st.host[e:] = [eos] * (len(st.host) - e)
                st.finished = True
                return
            st.block_id += 1
            if st.block_id == len(st.blocks):
                st.finished = True
                return

    def _holds_stop(self, tokens: list[int]) -> bool:
        info = self.model.info
        return not set(info.stop_ids or (info.eos_id,)).isdisjoint(tokens)

    def _block_done(self, st: _State) -> None:
        """A block is complete (credit: drop its matrix)."""

    # ---- decoding ---------------------------------------------------------------------------

    def _rule(self, seq: Sequence, logits: torch.Tensor, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, commit, logits the rule used) for the current block."""
        p = _params(seq)
        st: _State = seq.engine_state
        x0, commit = threshold_rule(logits, block, self.model.info.mask_id, self._threshold(st, p), p.temperature, st.generator)
        return x0, commit, logits

    def _threshold(self, st: _State, p: DInferParams) -> float:
        return p.threshold

    def _decode(self, seq: Sequence, logits: torch.Tensor) -> None:
        """ParallelDecoder.decode on the current block, plus the no-progress guard."""
        st: _State = seq.engine_state
        mask_id = self.model.info.mask_id
        s, e = st.block
        block = st.canvas[s:e]
        masked = block == mask_id
        x0, commit, used = self._rule(seq, logits, block)
        commit = commit & masked
        new = torch.where(commit, x0, block)
        progressed = commit & (x0 != mask_id)
        # every committed slot predicted the mask token: dInfer would loop forever. Decided on the
        # device (no sync): the guard's slot is taken only where nothing progressed.
        slot, tok = force_progress(used, block, mask_id)
        forced = slot & ~progressed.any()
        new = torch.where(forced, tok, new)
        progressed = progressed | forced
        st.canvas[s:e] = new
        if seq.logprobs is not None:  # opt-in (the model's distribution, before the rule's adjustments):
            # finding the committed slots reads back, a sync only a request that asks pays for
            slots = progressed.nonzero().flatten()
            st.logprobs.update(zip((s + slots).tolist(), token_logprobs(logits[slots], new[slots], seq.logprobs)))
        st.decoded.append((s, progressed, new))

    def _read_back(self, seqs: list[Sequence]) -> None:
        """The step's one host sync: what every decode of the step committed, into each
        sequence's `committed` and host canvas."""
        decoded = [(seq.engine_state, s, progressed, new) for seq in seqs for s, progressed, new in seq.engine_state.decoded]
        if not decoded:
            return
        (flat,) = readback(torch.cat([torch.cat((progressed.long(), new)) for _, _, progressed, new in decoded]))
        at = 0
        for st, s, progressed, _ in decoded:
            n = progressed.shape[0]
            flags, tokens = flat[at : at + n], flat[at + n : at + 2 * n]
            at += 2 * n
            for i in range(n):
                if flags[i]:
                    st.committed.append((s + i, tokens[i]))
                    st.host[s + i] = tokens[i]
            st.decoded = []

    # ---- forwards ---------------------------------------------------------------------------

    def _inputs(self, seq: Sequence, a: int, b: int) -> torch.Tensor:
        return seq.engine_state.canvas[a:b]

    def _logits_span(self, seq: Sequence, a: int, b: int) -> tuple[int, int]:
        """Canvas positions whose logits a forward of canvas[a:b] must return: the block."""
        return seq.engine_state.block

    def _forward(
        self, seqs: list[Sequence], spans: list[tuple[int, int]], *, cached: bool, write: bool
    ) -> list[tuple[int, torch.Tensor]]:
        """One forward over canvas[a:b] of each sequence; per sequence (c, logits) with logits for
        canvas positions [c, c + len) (the block, or the whole span for soft).

        write=False: full canvases with no cache. write=True: each row writes its inputs' K/V into
        its cache row and attends over the row's canvas slots (cached=False: the inputs are the
        full canvas, i.e. a refresh)."""
        rows, wanted = [], []
        for seq, (a, b) in zip(seqs, spans):
            st: _State = seq.engine_state
            st.nfe += 1
            if st.forwards is not None:
                st.forwards.append([b - a, [a, b] if cached else None, write])
            # logits only where the rule looks (the LM head over the whole input is costly)
            c, d = self._logits_span(seq, a, b)
            wanted.append(c)
            rows.append(
                Row(
                    self._inputs(seq, a, b),
                    start=a,
                    keys=st.length,
                    cache_row=st.cache_row if write else None,
                    logits=(c - a, d - a),
                )
            )
        return list(zip(wanted, self.forward(rows)))


class HierarchyRunner(DInferRunner):
    """`dinfer_hierarchy`: HierarchyDecoder."""

    def _rule(self, seq, logits, block):
        p: HierarchyParams = seq.params
        st: _State = seq.engine_state
        x0, commit = hierarchy_rule(
            logits, block, self.model.info.mask_id, p.threshold, p.low_threshold, p.temperature, st.generator
        )
        return x0, commit, logits


class CreditRunner(DInferRunner):
    """`dinfer_credit`: CreditThresholdParallelDecoder (threshold rule on credit-fused logits)."""

    def _init_extra(self, seq, st):
        p: CreditParams = seq.params
        st.credit = CreditState(p.credit_alpha, p.boost_gamma, p.decay_beta)

    def _block_done(self, st):
        st.credit.clear()

    def _rule(self, seq, logits, block):
        p: CreditParams = seq.params
        st: _State = seq.engine_state
        fused = st.credit.fuse(logits, block == self.model.info.mask_id, st.block)
        x0, commit = threshold_rule(fused, block, self.model.info.mask_id, p.threshold, p.temperature, st.generator)
        return x0, commit, fused


class SoftRunner(DInferRunner):
    """`dinfer_soft`: ThresholdParallelDecoder under dInfer's IterSmooth managers.

    Needs a model that takes `inputs_embeds` (capability INPUTS_EMBEDS) and exposes its input
    embedding through `get_input_embeddings()`."""

    soft = True
    graphable = False  # it forwards embeddings, which graphed forwards do not take

    def _embedding(self) -> nn.Embedding:
        get = getattr(self.model, "get_input_embeddings", None)
        if get is None:
            raise TypeError(f"{type(self.model).__name__} has no get_input_embeddings(); dinfer_soft needs it")
        return get()

    def _init_extra(self, seq, st):
        st.embeds = self._embedding()(st.canvas)  # IterationSmooth.reset_input_embeds

    def _inputs(self, seq, a, b):
        return seq.engine_state.embeds[a:b]

    def _threshold(self, st: _State, p: DInferParams) -> float:
        soft = cast(SoftParams, p)  # dinfer_soft sequences carry SoftParams
        return max(1 - st.iter_no * soft.threshold_decay, soft.threshold)

    @staticmethod
    def _weight(st: _State, p: SoftParams) -> float:
        return min(p.cont_weight_init + p.cont_weight_growth * st.iter_no, p.cont_weight)

    def _update_embeds(self, seq: Sequence, logits: torch.Tensor, a: int, b: int, weight: float) -> None:
        st: _State = seq.engine_state
        tokens = st.canvas[a:b]
        masked = tokens == self.model.info.mask_id
        assert st.embeds is not None  # set by _init_extra at admission
        st.embeds[a:b] = soft_embeddings(self._embedding(), tokens, masked, logits, weight)

    def _logits_span(self, seq, a, b):
        return a, b  # the embedding update needs the whole forwarded range

    def _after_full(self, seq, logits, c, kind):
        st: _State = seq.engine_state
        weight = self._weight(st, seq.params)  # from iter_no before this decode, as published
        super()._after_full(seq, logits, c, kind)
        self._update_embeds(seq, logits, 0, st.length, weight)

    def _after_window(self, seq, logits, c, a, b):
        st: _State = seq.engine_state
        weight = self._weight(st, seq.params)
        super()._after_window(seq, logits, c, a, b)
        self._update_embeds(seq, logits, a, b, weight)
