"""Canvas streaming (`stream_canvas: true`): what one denoising step did to one sequence's
canvas, as the runner really committed it.

The scheduler builds a `CanvasStep` from each `StepResult` of a sequence whose request asked
for it (one flag test per result otherwise, so the stream costs nothing when no request asks);
the route turns it into the `canvas` object of an SSE chunk, decoding each token's text on the
event loop, not on the scheduler thread.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from dserve.output import OutputTracker
from dserve.sequence import Sequence

_MASKED = -1  # OutputTracker's empty slot


@dataclass(frozen=True)
class CanvasStep:
    step: int  # the sequence's denoising steps so far, this one included (1-based)
    block: int  # index of the block being denoised: the first one with a masked position before this step
    nfe: int  # model forward passes spent on the sequence so far
    committed: tuple[tuple[int, int], ...]  # (position after the prompt, token id), in position order
    length: int  # canvas positions after the prompt (max_tokens rounded up to the algorithm's blocks)
    block_starts: tuple[int, ...]  # where each block starts (positions after the prompt)


def canvas_step(seq: Sequence, tracker: OutputTracker, committed: list[tuple[int, int]], step: int, nfe: int) -> CanvasStep:
    """The step's event; call it before the tracker applies `committed` (the block being
    denoised is read from the slots still masked)."""
    starts = tuple(seq.params.block_starts(seq.prompt_len, seq.gen_length))
    slots = tracker.slots
    first_masked = next((i for i in range(tracker.prefix_len, len(slots)) if slots[i] == _MASKED), len(slots) - 1)
    block = max(0, bisect_right(starts, first_masked) - 1)
    return CanvasStep(
        step=step,
        block=block,
        nfe=nfe,
        committed=tuple(sorted((p, t) for p, t in committed if 0 <= p < seq.gen_length)),
        length=seq.gen_length,
        block_starts=starts,
    )


class TokenTexts:
    """Each token's own text (special tokens by name, so an end-of-turn shows), cached per stream."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text


def canvas_object(step: CanvasStep, texts: TokenTexts) -> dict[str, Any]:
    """The `canvas` member of a streamed chunk (docs/api.md, "Canvas stream")."""
    return {
        "step": step.step,
        "block": step.block,
        "nfe": step.nfe,
        "committed": [{"position": p, "token_id": t, "text": texts(t)} for p, t in step.committed],
        "length": step.length,
        "block_starts": list(step.block_starts),
    }
