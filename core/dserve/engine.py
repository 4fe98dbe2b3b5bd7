"""The contract between the scheduler and decoding engines.

An algorithm is a step-wise runner over a batch of sequences. The scheduler admits sequences,
calls `step()` to run one denoising step for all of them, reads back what each committed, and
releases sequences that finished or were cancelled. The runner owns its device state (canvases,
caches, schedules); the scheduler owns when steps run and which sequences are in the batch.

A step is plan, forward, commit: the runner describes what each sequence forwards as
`dserve.batch.Row`s (tokens, positions, attention pattern, cache row, wanted logits), calls
`self.forward(rows)` (the core's one batched forward, `dserve.batch.forward`), and commits
tokens from the per-row logits. A runner that keeps K/V derives from `CachedRunner`, which owns
the `CachePool`, hands each sequence a cache row (`take_cache_row`) and frees it on release and
when the scheduler asks for idle memory back; the runner's per-sequence state only needs a
`cache_row` attribute.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from dserve.batch import Row, RowBatch, forward, to_device
from dserve.logprobs import TokenLogprob
from dserve.modeling import DiffusionModel
from dserve.modeling.cache_pool import CachePool
from dserve.sequence import Sequence


@dataclass
class StepResult:
    """What one step did to one sequence."""

    seq: Sequence
    committed: list[tuple[int, int]] = field(default_factory=list)  # (offset after prompt, token id)
    finished: bool = False  # the runner has nothing more to do for this sequence
    nfe: int = 1  # model forward passes this step spent on the sequence
    logprobs: list[TokenLogprob | None] | None = None  # per committed token, when the sequence asks (seq.logprobs)


class AlgorithmRunner(ABC):
    """Runs one algorithm of one engine for a changing batch of sequences."""

    # True: the runner calls the model with repeating shapes and consumes the logits before its
    # next call, so on a GPU it gets a dserve.modeling.cuda_graphs.GraphedModel.
    graphable = False
    # True: StepResult.logprobs is filled for sequences that ask (dserve.logprobs)
    reports_logprobs = False

    def __init__(self, model: DiffusionModel, *, max_batch_size: int = 16):
        self.model = model
        self.max_batch_size = max_batch_size
        self.sequences: list[Sequence] = []

    def has_capacity(self) -> bool:
        return len(self.sequences) < self.max_batch_size

    def admit(self, seq: Sequence) -> None:
        """Add a sequence; it takes part from the next step on."""
        seq.engine_state = self.init_state(seq)
        self.sequences.append(seq)

    def release(self, seq: Sequence) -> None:
        """Drop a sequence (finished or cancelled) and free what it held."""
        if seq in self.sequences:
            self.sequences.remove(seq)
            self.free_state(seq)
        seq.engine_state = None

    def new_canvas(self, seq: Sequence) -> torch.Tensor:
        """The sequence's canvas on the model's device: its prompt, then gen_length mask tokens."""
        device = self.model.device
        canvas = torch.full((seq.prompt_len + seq.gen_length,), self.model.info.mask_id, dtype=torch.long, device=device)
        canvas[: seq.prompt_len] = to_device(torch.tensor(seq.prompt_ids, dtype=torch.long), device)  # no sync
        return canvas

    @abstractmethod
    def init_state(self, seq: Sequence) -> object:
        """Build the per-sequence state (canvas, schedule, generator)."""

    def free_state(self, seq: Sequence) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Free per-sequence device state beyond what garbage collection frees."""

    def release_idle_memory(self) -> bool:
        """With no sequence running, free device memory kept for the next ones (a KV cache and
        the CUDA graphs bound to it); True if anything was freed. The scheduler calls it when
        another runner's step runs out of memory."""
        return False

    def forward(self, rows: list[Row], *, graphable: bool = True) -> list[torch.Tensor]:
        """The core's batched forward over `rows`: per row, the logits of its wanted offsets.
        graphable=False: a one-off shape (a prefill), run eagerly under a CUDA-graph wrapper."""
        return forward(self.model, RowBatch(rows, graphable), None)

    @abstractmethod
    def step(self) -> list[StepResult]:
        """One denoising step for every admitted sequence; one result per sequence."""


class CachedRunner(AlgorithmRunner):
    """A runner whose sequences keep K/V: one `CachePool` row per sequence (state attribute
    `cache_row`, None for a sequence that uses no cache), freed on release; the pool's tensors
    outlive the batch (the next request reuses them and the CUDA graphs bound to them) until the
    scheduler asks for idle memory back."""

    def __init__(self, model: DiffusionModel, *, max_batch_size: int = 16):
        super().__init__(model, max_batch_size=max_batch_size)
        self.pool = CachePool(model, max_batch_size)

    def take_cache_row(self, positions: int) -> int:
        """A cache row for a sequence that will use `positions` slots, reserved at admission so
        the cache (and the CUDA graphs captured over it) does not change while it runs."""
        return self.pool.take(positions)

    def free_state(self, seq: Sequence) -> None:
        st = seq.engine_state
        row = getattr(st, "cache_row", None)
        if row is not None:
            self.pool.give(row)
            st.cache_row = None

    def release_idle_memory(self) -> bool:
        return not self.sequences and self.pool.drop_idle()

    def forward(self, rows: list[Row], *, graphable: bool = True) -> list[torch.Tensor]:
        return forward(self.model, RowBatch(rows, graphable), self.pool)
