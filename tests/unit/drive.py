"""Drive a step-wise runner to completion outside the server (tests only)."""

from __future__ import annotations

from dserve.sequence import Sequence


def run_to_completion(runner, seqs: list[Sequence], max_steps: int = 10_000) -> dict[int, list[int]]:
    """Admit `seqs`, step until each reports finished; return each one's final canvas."""
    for seq in seqs:
        runner.admit(seq)
    canvases: dict[int, list[int]] = {}
    nfe = {s.seq_id: 0 for s in seqs}
    for _ in range(max_steps):
        if not runner.sequences:
            break
        for result in runner.step():
            nfe[result.seq.seq_id] += result.nfe
            if result.finished:
                canvases[result.seq.seq_id] = result.seq.engine_state.canvas.tolist()
                runner.release(result.seq)
    assert not runner.sequences, "runner did not finish"
    for seq in seqs:
        seq.nfe = nfe[seq.seq_id]
    return canvases
