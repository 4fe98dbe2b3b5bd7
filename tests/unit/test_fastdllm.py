"""The Fast-dLLM runners against the published NVlabs/Fast-dLLM loops (fixture canvases, NFE and
forward inputs of revision f6b35ec), batch invariance, seeded sampling, cache rows."""

import pytest
import torch

from dserve.params import ParamError, resolve_params
from dserve.sequence import Sequence
from dserve_fastdllm.params import FastDLLMParams
from dserve_fastdllm.rules import transfer_mask
from dserve_fastdllm.runner import BasicRunner, DualCacheRunner, PrefixCacheRunner
from dserve_llada.model import load_llada
from unit.drive import run_to_completion

RUNNERS = {
    "generate": BasicRunner,
    "generate_with_prefix_cache": PrefixCacheRunner,
    "generate_with_dual_cache": DualCacheRunner,
}
ALGORITHMS = {"basic": BasicRunner, "prefix_cache": PrefixCacheRunner, "dual_cache": DualCacheRunner}
CONFIGS = ["fixed_steps32", "fixed_steps8", "threshold0.9", "threshold0.5", "threshold0.3", "factor1.0"]


@pytest.fixture(scope="module")
def model(tiny_random_dir):
    return load_llada(tiny_random_dir, dtype="float32")


def _params(p: dict) -> FastDLLMParams:
    return FastDLLMParams(
        steps=p["steps"],
        block_length=p["block_length"],
        temperature=p["temperature"],
        remasking=p["remasking"],
        threshold=p.get("threshold"),
        factor=p.get("factor"),
    )


def _run(published, config, function):
    return next(r for r in published["fastdllm"]["runs"]["f6b35ec"] if r["config"] == config and r["function"] == function)


@pytest.mark.parametrize("function", list(RUNNERS))
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_published_fastdllm(model, published, monkeypatch, config, function):
    run = _run(published, config, function)
    inputs = []
    forward = model.forward

    def recording(input_ids, positions=None, **kw):
        inputs.append(input_ids[0].tolist())
        return forward(input_ids, positions, **kw)

    monkeypatch.setattr(model, "forward", recording)
    seq = Sequence(run["prompt"][0], max_tokens=run["params"]["gen_length"], params=_params(run["params"]))
    canvas = run_to_completion(RUNNERS[function](model), [seq])[seq.seq_id]
    assert canvas == run["canvas"][0]
    assert seq.nfe == run["nfe"]
    # the same loop: full canvas at a block start, then suffix (prefix cache) or block (dual)
    assert inputs == [call["input_ids"][0] for call in run["forward_calls"]]


def _mixed_batch():
    """Different prompt lengths, block lengths, rules, gen lengths; one sampled row."""
    return [
        ([3, 14, 15, 92, 65, 35, 89, 79, 32], 32, dict(block_length=8, threshold=0.9)),
        ([2, 71, 82], 16, dict(block_length=4, steps=8)),
        ([27, 18, 28, 18, 28, 45, 90, 45, 23, 53, 60, 28], 24, dict(block_length=8, factor=1.0)),
        ([1, 2, 3, 4, 5], 8, dict(block_length=8, threshold=0.5)),  # finishes early: its row is reused
        ([66, 77, 88, 99, 11, 22, 33], 64, dict(block_length=16, steps=32)),  # grows the cache capacity
        ([9, 8, 7, 6], 16, dict(block_length=8, threshold=0.3, temperature=0.8)),
    ]


def _drive_staggered(runner, seqs, admit_at):
    """Admit seqs[i] before step admit_at[i]; return the final canvases and NFEs."""
    canvases, nfe, step = {}, {s.seq_id: 0 for s in seqs}, 0
    pending = list(zip(admit_at, seqs))
    while pending or runner.sequences:
        for when, seq in [x for x in pending if x[0] <= step]:
            runner.admit(seq)
            pending.remove((when, seq))
        for result in runner.step():
            nfe[result.seq.seq_id] += result.nfe
            if result.finished:
                canvases[result.seq.seq_id] = result.seq.engine_state.canvas.tolist()
                runner.release(result.seq)
        step += 1
        assert step < 1000
    return canvases, nfe


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_mixed_batch_equals_each_alone(model, algorithm):
    """Rows at different blocks, of different lengths and rules, joining at different steps
    (one reusing a released cache row): each row decodes as if alone, with the same NFE."""
    runner_cls = ALGORITHMS[algorithm]

    def make():
        return [Sequence(prompt, max_tokens=n, params=FastDLLMParams(**kw), seed=7) for prompt, n, kw in _mixed_batch()]

    alone = []
    for seq in make():
        canvases, nfe = _drive_staggered(runner_cls(model), [seq], [0])
        alone.append((canvases[seq.seq_id], nfe[seq.seq_id]))
    seqs = make()
    runner = runner_cls(model)
    canvases, nfe = _drive_staggered(runner, seqs, [0, 0, 1, 2, 3, 9])
    assert [(canvases[s.seq_id], nfe[s.seq_id]) for s in seqs] == alone
    if algorithm != "basic":
        assert runner.pool.used == set() and runner.release_idle_memory() and runner.pool.cache is None


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_seeded_sampling_repeats(model, algorithm):
    def once(seed, **kw):
        seq = Sequence([5, 6, 7, 8], max_tokens=16, params=FastDLLMParams(block_length=8, temperature=0.9, **kw), seed=seed)
        return run_to_completion(ALGORITHMS[algorithm](model), [seq])[seq.seq_id]

    assert once(1, threshold=0.5) == once(1, threshold=0.5)
    assert once(1, steps=8, remasking="random") == once(1, steps=8, remasking="random")
    assert once(1, steps=16) != once(2, steps=16)


def test_release_frees_the_cache_row(model):
    runner = DualCacheRunner(model, max_batch_size=4)
    a, b = (Sequence([1, 2, 3], max_tokens=8, params=FastDLLMParams(block_length=8)) for _ in range(2))
    runner.admit(a)
    runner.admit(b)
    runner.step()
    assert runner.pool.used == {0, 1} and runner.pool.cache is not None
    runner.release(a)  # cancelled mid-block
    assert runner.pool.used == {1}
    c = Sequence([4, 5], max_tokens=8, params=FastDLLMParams(block_length=8))
    runner.admit(c)
    assert c.engine_state.cache_row == 0
    runner.release(b)
    assert not runner.release_idle_memory(), "a running sequence's cache must stay"
    runner.release(c)
    # idle: the cache stays for the next request (and the CUDA graphs bound to it) ...
    cache = runner.pool.cache
    assert runner.pool.used == set() and cache is not None
    d = Sequence([6, 7, 8], max_tokens=8, params=FastDLLMParams(block_length=8))
    runner.admit(d)
    runner.step()
    assert runner.pool.cache is cache
    runner.release(d)
    # ... until the scheduler asks for the memory back
    assert runner.release_idle_memory() and runner.pool.cache is None
    assert not runner.release_idle_memory()


# ---- commit rules and parameters (no model) ---------------------------------------------------


def _count(conf, **rule):
    t = torch.tensor(conf, dtype=torch.float64)
    n = int(torch.isfinite(t).sum())
    return transfer_mask(t, n, **rule).nonzero().flatten().tolist()


def test_threshold_keeps_the_best_and_all_at_or_above():
    inf = float("inf")
    assert _count([0.2, 0.5, -inf, 0.1], threshold=0.9) == [1]
    assert _count([0.9, 0.5, 0.95, 0.1], threshold=0.9) == [0, 2]
    assert _count([0.3, -inf, 0.3], threshold=0.3) == [0, 2]
    assert _count([0.2, 0.5, -inf, 0.1], threshold=0.0) == [0, 1, 3]  # 0: every masked position


def test_factor_rule_and_its_last_rank_quirk():
    # bars: rank 0: -1, rank 1: 1 - f/3, rank 2: 1 - f/4, rank 3: 1 - f/5  (f = 1)
    assert _count([0.9, 0.7, 0.6, 0.1], factor=1.0) == [0, 1]  # 0.6 < 0.75 fails at rank 2
    assert _count([0.9, 0.7, 0.1], factor=1.0) == [0, 1, 2]  # only the last rank fails: all
    assert _count([0.9, 0.5, 0.4, 0.3], factor=1.0) == [0]  # fails at rank 1
    assert _count([0.2], factor=1.0) == [0]
    assert _count([0.99, 0.99, 0.99, 0.99], factor=1.0) == [0, 1, 2, 3]
    # factor wins over threshold
    assert _count([0.9, 0.7, 0.6, 0.1], factor=1.0, threshold=0.05) == [0, 1]


def test_fixed_quota_takes_the_most_confident():
    assert _count([0.1, 0.8, -float("inf"), 0.5], quota=2) == [1, 3]


def test_params_defaults_and_validation():
    p = resolve_params(FastDLLMParams, {})
    assert (p.threshold, p.factor, p.remasking, p.rule, p.block_length) == (None, None, "low_confidence", "fixed", 32)
    assert resolve_params(FastDLLMParams, {"threshold": 0.9, "factor": 1.0}).rule == "factor"
    # threshold's bounds are the declared field's (dserve.fields): 0 is allowed, as on the wire
    assert resolve_params(FastDLLMParams, {"threshold": 0.0}).rule == "threshold"
    for bad in ({"threshold": -0.1}, {"threshold": 1.5}, {"factor": 0}):
        with pytest.raises(ParamError) as err:
            resolve_params(FastDLLMParams, bad)
        assert err.value.param == next(iter(bad))
    with pytest.raises(ParamError) as err:
        resolve_params(FastDLLMParams, {"threshold": 0.9, "remasking": "random"})
    assert err.value.param == "remasking"
    assert resolve_params(FastDLLMParams, {"cfg_scale": 1.0}).rule == "fixed"  # common field, unused


@pytest.mark.parametrize("algorithm", ["dual_cache", "prefix_cache"])
def test_refresh_every_forwards_the_previous_block_between_full_refreshes(model, monkeypatch, algorithm):
    """refresh_every=2 over 4 blocks of 8: full canvases at blocks 0 and 2; blocks 1 and 3 start
    with the previous block and the current one (dual) or everything from the previous block
    on (prefix), over the cache; refresh_every=1 is the published schedule."""
    prompt, gen, bl = [3, 14, 15, 92, 65, 35, 89], 32, 8
    L = len(prompt) + gen
    widths = []
    forward = model.forward

    def recording(input_ids, positions=None, **kw):
        widths.append(input_ids.shape[1])
        return forward(input_ids, positions, **kw)

    monkeypatch.setattr(model, "forward", recording)

    def run(every):
        widths.clear()
        seq = Sequence(prompt, gen, FastDLLMParams(block_length=bl, steps=8, refresh_every=every))
        out = run_to_completion(ALGORITHMS[algorithm](model), [seq])[seq.seq_id]
        return out, list(widths)

    published, published_widths = run(1)
    cheaper, cheaper_widths = run(2)
    assert published_widths.count(L) == 4 and cheaper_widths.count(L) == 2
    starts = [w for i, w in enumerate(cheaper_widths) if i % 2 == 0]  # steps_per_block = 2
    for block, width in enumerate(starts):
        s = len(prompt) + block * bl
        expected = L if block % 2 == 0 else (2 * bl if algorithm == "dual_cache" else L - (s - bl))
        assert width == expected
    assert cheaper[: len(prompt)] == published[: len(prompt)] and model.info.mask_id not in cheaper
    assert sum(cheaper_widths) < sum(published_widths)
