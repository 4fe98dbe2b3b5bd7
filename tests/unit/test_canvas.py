"""The canvas stream's step events (dserve.canvas) and each algorithm's block layout."""

from __future__ import annotations

import pytest

from dserve.canvas import TokenTexts, canvas_object, canvas_step
from dserve.output import OutputTracker
from dserve.params import DecodingParams
from dserve.sequence import Sequence
from dserve_dinfer import params as dinfer_params
from dserve_dinfer.runner import DInferRunner
from dserve_dream.params import DreamParams
from dserve_llada.model import load_llada
from dserve_nemotron.params import AutoregressiveParams, LinearSpecParams


class Tokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join("<eos>" if i == 0 else chr(i) for i in ids if i or not skip_special_tokens)


def test_blocks_are_whole_block_length_runs_by_default():
    assert DecodingParams(block_length=4).block_starts(prompt_len=7, gen_length=12) == [0, 4, 8]


@pytest.mark.parametrize("params", [DreamParams(), AutoregressiveParams(), LinearSpecParams()])
def test_algorithms_without_fixed_blocks_have_one(params):
    assert params.block_starts(prompt_len=5, gen_length=20) == [0]


def test_dinfer_aligned_blocks_are_the_runners_blocks(tiny_random_dir):
    """start_block_align: blocks at absolute multiples of block_length, the first holding the
    prompt's tail; the layout the stream reports is the one the runner decodes."""
    model = load_llada(tiny_random_dir, dtype="float32")
    runner = DInferRunner(model)
    for prompt_len, align in [(5, True), (8, True), (5, False)]:
        params = dinfer_params.DInferParams(block_length=4, start_block_align=align, cache="none")
        seq = Sequence(list(range(10, 10 + prompt_len)), 10, params)
        runner.admit(seq)
        blocks = [max(0, start - prompt_len) for start, _ in seq.engine_state.blocks]
        assert params.block_starts(prompt_len, seq.gen_length) == blocks
        runner.release(seq)
    assert dinfer_params.DInferParams(block_length=4, start_block_align=True).block_starts(5, 12) == [0, 3, 7, 11]


def test_a_step_reports_its_block_and_commits_in_position_order():
    seq = Sequence([1, 2, 3], max_tokens=8, params=DecodingParams(block_length=4))
    tracker = OutputTracker(Tokenizer(), seq.gen_length, 8, (0,))
    first = canvas_step(seq, tracker, [(2, ord("c")), (0, ord("a"))], step=1, nfe=1)
    assert (first.step, first.block, first.nfe, first.length, first.block_starts) == (1, 0, 1, 8, (0, 4))
    assert first.committed == ((0, ord("a")), (2, ord("c")))
    tracker.apply(list(first.committed))
    tracker.apply([(1, ord("b")), (3, ord("d"))])
    # block 0 is complete: the next step denoises block 1; an offset past the canvas is dropped
    second = canvas_step(seq, tracker, [(5, 0), (9, ord("z"))], step=3, nfe=2)
    assert second.block == 1 and second.committed == ((5, 0),)
    obj = canvas_object(second, TokenTexts(Tokenizer()))
    assert obj["committed"] == [{"position": 5, "token_id": 0, "text": "<eos>"}]  # special tokens by name
    assert obj["block_starts"] == [0, 4]
