"""The reference runner against the published LLaDA `generate` (fixture canvases)."""

import pytest

from dserve.sequence import Sequence
from dserve_llada.model import load_llada
from dserve_llada.params import ReferenceParams
from dserve_llada.reference import ReferenceRunner
from unit.drive import run_to_completion


@pytest.fixture(scope="module")
def model(tiny_random_dir):
    return load_llada(tiny_random_dir, dtype="float32")


def _seq(prompt, p, **extra):
    params = ReferenceParams(
        steps=p["steps"],
        block_length=p["block_length"],
        temperature=p["temperature"],
        remasking=p["remasking"],
        cfg_scale=p.get("cfg_scale", 0.0),
        **extra,
    )
    return Sequence(list(prompt), max_tokens=p["gen_length"], params=params)


@pytest.mark.parametrize("case", list("abcdefg"))
def test_matches_published_generate(model, published, case):
    spec = next(c for c in published["llada_generate"]["cases"] if c["case"] == case)
    seqs = [_seq(prompt, spec["params"]) for prompt in spec["prompt"]]
    canvases = run_to_completion(ReferenceRunner(model), seqs)
    assert [canvases[s.seq_id] for s in seqs] == spec["canvas"]
    assert all(s.nfe == spec["nfe"] for s in seqs)


def test_mixed_batch_equals_each_alone(model, published):
    """Different prompt lengths, steps and block lengths in one batch: each row as if alone."""
    specs = published["llada_generate"]["cases"]
    alone = {}
    for spec in specs:
        if spec["case"] in "abcdf":
            seq = _seq(spec["prompt"][0], spec["params"])
            alone[spec["case"]] = run_to_completion(ReferenceRunner(model), [seq])[seq.seq_id]
    seqs = {spec["case"]: _seq(spec["prompt"][0], spec["params"]) for spec in specs if spec["case"] in "abcdf"}
    together = run_to_completion(ReferenceRunner(model), list(seqs.values()))
    assert {c: together[s.seq_id] for c, s in seqs.items()} == alone


def test_random_remasking_and_sampling_repeat_with_a_seed(model):
    params = ReferenceParams(steps=8, block_length=8, temperature=0.7, remasking="random")

    def once(seed):
        seq = Sequence([5, 6, 7, 8], max_tokens=16, params=params, seed=seed)
        return run_to_completion(ReferenceRunner(model), [seq])[seq.seq_id]

    assert once(1) == once(1)
    assert once(1) != once(2)


def test_steps_not_divisible_by_blocks_round_up(model):
    params = ReferenceParams(steps=5, block_length=8)
    seq = Sequence([1, 2, 3], max_tokens=16, params=params)
    canvas = run_to_completion(ReferenceRunner(model), [seq])[seq.seq_id]
    assert seq.nfe == 6  # ceil(5 / 2 blocks) = 3 steps per block
    assert 255 not in canvas
