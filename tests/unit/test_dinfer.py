"""The dinfer engine against the published dInfer decoders and managers (fixture canvases).

tests/fixtures/dinfer/expected.json holds what inclusionAI/dInfer@fce4e32 produced on the tiny
random LLaDA checkpoint (see its provenance): canvas, NFE and the list of forwards of every case.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dserve.params import ParamError, resolve_params
from dserve.registry import INPUTS_EMBEDS
from dserve.sequence import Sequence
from dserve_dinfer import params as P
from dserve_dinfer import runner as R
from dserve_llada.model import load_llada

FIXTURE = Path(__file__).parent.parent / "fixtures" / "dinfer" / "expected.json"
ALGORITHMS = {
    "threshold": (R.DInferRunner, P.DInferParams),
    "hierarchy": (R.HierarchyRunner, P.HierarchyParams),
    "credit": (R.CreditRunner, P.CreditParams),
    "soft": (R.SoftRunner, P.SoftParams),
}


@pytest.fixture(scope="module")
def models(tiny_random_dir):
    """The LLaDA plugin's model (it takes inputs_embeds, which dinfer_soft needs)."""
    model = load_llada(tiny_random_dir, dtype="float32")
    assert INPUTS_EMBEDS in model.info.capabilities
    return {"plain": model, "soft": model}


def _model(models, algorithm):
    return models["soft" if algorithm == "soft" else "plain"]


@pytest.fixture
def eos_as(models):
    """Temporarily treat another token as the models' EOS (the checkpoint's EOS 250 is almost
    never predicted; the fixture's *_eos226_* cases pass eos_id=226 to the published decoder)."""
    original = {k: m.info for k, m in models.items()}

    def use(eos_id, stop_ids=None):
        for k, m in models.items():
            m.info = dataclasses.replace(original[k], eos_id=eos_id, stop_ids=tuple(stop_ids or (eos_id,)))

    yield use
    for k, m in models.items():
        m.info = original[k]


with open(FIXTURE, encoding="utf-8") as _f:
    PUBLISHED = json.load(_f)
CASES = PUBLISHED["cases"]


def _algorithm(config) -> str:
    return "soft" if config["manager"].startswith("soft") else config["decoder"]


def _make(case, **override):
    """(runner class, Sequence) for a fixture case, its published constructor arguments mapped to
    our parameters."""
    c = dict(case["config"])
    runner_cls, params_cls = ALGORITHMS[_algorithm(c)]
    manager = c.pop("manager")
    c.pop("decoder")
    c.pop("eos_id", None)
    gen_length = c.pop("gen_length")
    if manager in ("blockwise", "soft") and c.get("cache") == "dual":
        c.update(prefix_look=0, after_look=0, warmup_steps=0)  # plain dual cache, no vicinity
    c.update(override)
    seq = Sequence(list(case["prompt"]), max_tokens=gen_length, params=params_cls(**c))
    seq.gen_length = gen_length  # the published canvas (a clipped last block with start_block_align)
    return runner_cls, seq


def _drive(runner, seqs, later=(), admit_after=3, max_steps=2000):
    """Step to completion; `later` sequences join after `admit_after` steps. Returns per sequence:
    canvas, NFE, forward trace, and the canvas rebuilt from the reported commits."""
    out = {}
    rebuilt = {s.seq_id: [None] * s.gen_length for s in (*seqs, *later)}
    nfe = {s.seq_id: 0 for s in (*seqs, *later)}
    for s in seqs:
        runner.admit(s)
    for step in range(max_steps):
        if step == admit_after:
            for s in later:
                runner.admit(s)
        if not runner.sequences and (step >= admit_after or not later):
            break
        for res in runner.step():
            sid = res.seq.seq_id
            nfe[sid] += res.nfe
            for offset, token in res.committed:
                assert rebuilt[sid][offset] is None, "a slot was committed twice"
                rebuilt[sid][offset] = token
            if res.finished:
                st = res.seq.engine_state
                out[sid] = {"canvas": st.canvas.tolist(), "forwards": st.forwards, "nfe": nfe[sid], "rebuilt": rebuilt[sid]}
                runner.release(res.seq)
    assert not runner.sequences, "runner did not finish"
    return out


def _run_alone(models, case, **override):
    runner_cls, seq = _make(case, **override)
    runner = runner_cls(_model(models, _algorithm(case["config"])))
    runner.record_forwards = True
    return _drive(runner, [seq])[seq.seq_id]


def _case_id(case):
    return f"{case['case']}-p{len(case['prompt'])}"


# ---- the published decoders, token for token ------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_published(models, eos_as, case):
    if "eos_id" in case["config"]:
        eos_as(case["config"]["eos_id"])
    got = _run_alone(models, case)
    assert got["canvas"] == case["canvas"]
    assert got["nfe"] == case["nfe"]
    # the same forwards in the same order: [input length, replace range, writes/uses a cache]
    assert got["forwards"] == [f[:3] for f in case["forwards"]]
    # what the steps reported is exactly the generated part of the canvas
    assert got["rebuilt"] == case["canvas"][len(case["prompt"]) :]


def test_fixture_covers_every_algorithm_and_cache_mode():
    seen = {(_algorithm(c["config"]), c["config"]["manager"], c["config"].get("cache", "none")) for c in CASES}
    for alg in ("threshold", "hierarchy", "credit"):
        assert {(alg, "blockwise", "none"), (alg, "vicinity", "dual")} <= seen
    for cache in ("none", "prefix", "dual"):
        assert ("threshold", "blockwise", cache) in seen and ("soft", "soft", cache) in seen
    assert ("soft", "soft_vicinity", "dual") in seen
    assert all(c["fp64_rerun_identical"] for c in CASES)


# ---- batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["threshold", "hierarchy", "credit", "soft"])
def test_mixed_batch_equals_each_alone(models, algorithm):
    """Every fixture case of one algorithm (prompt lengths, block lengths, thresholds, cache
    none/prefix/dual/vicinity, unroll, alignment) in one runner, half of them joining after three
    steps: each sequence gets its published canvas and NFE, as if it ran alone."""
    cases = [c for c in CASES if _algorithm(c["config"]) == algorithm and "eos_id" not in c["config"]]
    made = [_make(c) for c in cases]
    runner = made[0][0](_model(models, algorithm), max_batch_size=len(made))
    runner.record_forwards = True
    seqs = [seq for _, seq in made]
    got = _drive(runner, seqs[::2], later=seqs[1::2])
    for case, seq in zip(cases, seqs):
        assert got[seq.seq_id]["canvas"] == case["canvas"], _case_id(case)
        assert got[seq.seq_id]["nfe"] == case["nfe"], _case_id(case)
    assert not runner.pool.used and runner.release_idle_memory() and runner.pool.cache is None


def test_a_step_makes_at_most_three_forwards(models, monkeypatch):
    model = models["plain"]
    cases = [c for c in CASES if _algorithm(c["config"]) == "threshold" and "eos_id" not in c["config"]]
    made = [_make(c) for c in cases]
    runner = R.DInferRunner(model, max_batch_size=len(made))
    calls = []
    forward = model.forward

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counted)
    for _, seq in made:
        runner.admit(seq)
    per_step = []
    while runner.sequences:
        before = len(calls)
        for res in runner.step():
            if res.finished:
                runner.release(res.seq)
        per_step.append(len(calls) - before)
    assert max(per_step) <= 3
    assert sum(calls) == sum(c["nfe"] for c in cases)  # rows forwarded = the sequences' NFE


def test_released_rows_are_reused_without_stale_state(models):
    model = models["plain"]
    """Cancel a cached sequence mid-block while another keeps the cache alive; the next sequence
    takes the cancelled one's row (holding stale K/V) and still gets its published canvas."""
    pick = {c["case"] + str(len(c["prompt"])): c for c in CASES}
    keeper_case, case = pick["blockwise_vicinity_default_b89"], pick["blockwise_vicinity_small13"]
    runner_cls, keeper = _make(keeper_case)
    _, victim = _make(case)
    runner = runner_cls(model)
    runner.admit(keeper)
    runner.admit(victim)
    for _ in range(5):
        runner.step()
    row = victim.engine_state.cache_row
    runner.release(victim)
    assert victim.engine_state is None and runner.pool.used == {keeper.engine_state.cache_row}
    _, seq = _make(case)
    runner.admit(seq)
    assert seq.engine_state.cache_row == row and runner.pool.cache is not None
    canvases = {}
    while runner.sequences:
        for res in runner.step():
            if res.finished:
                canvases[res.seq.seq_id] = res.seq.engine_state.canvas.tolist()
                runner.release(res.seq)
    assert canvases[seq.seq_id] == case["canvas"] and canvases[keeper.seq_id] == keeper_case["canvas"]
    assert not runner.pool.used and runner.release_idle_memory() and runner.pool.cache is None


# ---- early stop, the no-progress guard, sampling -----------------------------------------------


def test_early_stop_on_end_of_turn_fills_eos(models, eos_as):
    """Any stop id (EOS or end-of-turn) in a finished block ends the sequence; later slots get EOS."""
    case = next(c for c in CASES if c["case"] == "blockwise_eos226_dual" and len(c["prompt"]) == 9)
    eos_as(250, stop_ids=(250, 226))
    got = _run_alone(models, case)
    P_ = len(case["prompt"])
    assert got["canvas"][: P_ + 8] == case["canvas"][: P_ + 8]  # the first block, as published
    assert got["canvas"][P_ + 8 :] == [250] * (len(got["canvas"]) - P_ - 8)
    assert got["nfe"] == case["nfe"]


def test_early_stop_off_decodes_every_block(models, eos_as):
    case = next(c for c in CASES if c["case"] == "blockwise_eos226_dual" and len(c["prompt"]) == 9)
    eos_as(226)
    got = _run_alone(models, case, early_stop=False)
    assert 255 not in got["canvas"] and got["nfe"] > case["nfe"]
    assert got["canvas"][: len(case["prompt"]) + 8] == case["canvas"][: len(case["prompt"]) + 8]


def test_ignore_eos_request_decodes_every_block(models, eos_as):
    """ignore_eos (a request field) turns the engine's own early stop off, like early_stop=False."""
    case = next(c for c in CASES if c["case"] == "blockwise_eos226_dual" and len(c["prompt"]) == 9)
    eos_as(226)
    runner_cls, seq = _make(case)
    seq.ignore_eos = True
    got = _drive(runner_cls(_model(models, _algorithm(case["config"]))), [seq])[seq.seq_id]
    assert 255 not in got["canvas"] and got["nfe"] > case["nfe"]


@pytest.mark.parametrize("algorithm", ["threshold", "hierarchy", "credit", "soft"])
def test_guard_when_every_slot_predicts_the_mask(models, monkeypatch, algorithm):
    """dInfer never ends when every masked slot predicts the mask token; we commit the best
    non-mask token instead (one per decode)."""
    model = _model(models, algorithm)
    forward = model.forward

    def mask_wins(*args, **kwargs):
        logits = forward(*args, **kwargs)
        logits[..., 255] = logits.amax(-1) + 5.0
        return logits

    monkeypatch.setattr(model, "forward", mask_wins)
    runner_cls, params_cls = ALGORITHMS[algorithm]
    seq = Sequence([5, 6, 7, 8, 9], max_tokens=16, params=params_cls(block_length=8, cache="none"))
    got = _drive(runner_cls(model), [seq], max_steps=200)[seq.seq_id]
    assert 255 not in got["canvas"] and got["nfe"] == 16


def test_sampling_repeats_with_a_seed_and_ignores_batch_mates(models):
    model = models["plain"]

    def params(**kw):
        return P.DInferParams(temperature=0.8, block_length=8, threshold=0.8, **kw)

    def alone(seed, **kw):
        seq = Sequence([3, 1, 4, 1, 5, 9, 2, 6], max_tokens=24, params=params(**kw), seed=seed)
        return _drive(R.DInferRunner(model), [seq])[seq.seq_id]["canvas"]

    assert alone(1) == alone(1) != alone(2)
    seqs = [
        Sequence([3, 1, 4, 1, 5, 9, 2, 6], max_tokens=24, params=params(), seed=1),
        Sequence([2, 7, 1, 8], max_tokens=16, params=params(cache="prefix"), seed=5),
        Sequence([3, 1, 4, 1, 5, 9, 2, 6], max_tokens=24, params=params(cache="none"), seed=2),
    ]
    got = _drive(R.DInferRunner(model), seqs)
    assert got[seqs[0].seq_id]["canvas"] == alone(1)
    assert got[seqs[2].seq_id]["canvas"] == alone(2, cache="none")


# ---- parameters and registration ----------------------------------------------------------------


def test_published_defaults():
    p = P.DInferParams()
    assert (p.threshold, p.cache, p.prefix_look, p.after_look, p.warmup_steps) == (0.9, "dual", 16, 16, 4)
    assert (p.early_stop, p.maximum_unroll, p.expected_tpf, p.block_length, p.temperature) == (True, 4, 8, 64, 0.0)
    assert p.vicinity and P.HierarchyParams().low_threshold == 0.6
    c = P.CreditParams()
    assert (c.credit_alpha, c.boost_gamma, c.decay_beta) == (0.7, 0.2, 0.8)
    s = P.SoftParams()
    assert (s.cont_weight, s.cont_weight_init, s.cont_weight_growth, s.threshold_decay) == (0.3, 0.15, 0.02, 0.02)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"threshold": 1.5}, "threshold"),
        ({"cache": "full"}, "cache"),
        ({"cache": "prefix", "prefix_look": 4}, "prefix_look"),
        ({"cache": "none", "warmup_steps": 2}, "warmup_steps"),
        ({"cache": "none", "cache_update_freq": 2}, "cache_update_freq"),
        ({"cache_update_freq": 0}, "cache_update_freq"),
        ({"maximum_unroll": 0}, "maximum_unroll"),
        ({"decay_beta": 1.5}, "decay_beta"),
        ({"low_threshold": -0.1}, "low_threshold"),
        ({"cont_weight": -1}, "cont_weight"),
        ({"tresholld": 0.9}, "tresholld"),
    ],
)
def test_invalid_parameters_name_the_field(fields, param):
    params_cls = {"decay_beta": P.CreditParams, "low_threshold": P.HierarchyParams, "cont_weight": P.SoftParams}.get(
        param, P.DInferParams
    )
    with pytest.raises(ParamError) as err:
        resolve_params(params_cls, fields, algorithm="dinfer/x")
    assert err.value.param == param


def test_vicinity_defaults_are_unused_without_dual_cache():
    p = resolve_params(P.DInferParams, {"cache": "prefix", "steps": 7, "remasking": "random"})
    assert p.cache == "prefix" and not p.vicinity
    assert not resolve_params(P.DInferParams, {"prefix_look": 0, "after_look": 0, "warmup_steps": 0}).vicinity


def test_plugin_registers_the_engine_without_importing_torch():
    code = (
        "import sys, dserve_dinfer.plugin as pl, dserve_dinfer.params\n"
        "specs = []\n"
        "pl.register_engines(specs.append)\n"
        "e = specs[0]\n"
        "print(e.name, e.default_algorithm, *[a.name for a in e.algorithms])\n"
        "print(sorted(e.algorithm('dinfer_soft').requires))\n"
        "[a.load_params() for a in e.algorithms]\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "dinfer dinfer_blockwise dinfer_blockwise dinfer_hierarchy dinfer_credit dinfer_soft"
    assert out[1] == "['bidirectional', 'inputs_embeds', 'kv_cache']"
    assert out[2] == "False"


def test_the_cache_has_its_final_size_from_the_first_cached_forward(models, monkeypatch):
    """Vicinity windows are ragged once sequences are in different blocks (a window is clipped at
    the canvas end); their pads need a slot past the canvas, reserved at admission, so the cache
    never grows mid-run (growing drops every CUDA graph captured over it)."""
    from dserve.modeling import cache_pool

    sizes, reserve = [], cache_pool.CachePool.reserve

    def recording(self, capacity):
        cache = reserve(self, capacity)
        if not sizes or sizes[-1] is not cache:
            sizes.append(cache)
        return cache

    monkeypatch.setattr(cache_pool.CachePool, "reserve", recording)
    model = models["plain"]
    params = P.DInferParams(block_length=16, threshold=0.3)
    runner = R.DInferRunner(model, max_batch_size=4)
    # equal canvases of 128 positions (two cache rounding steps), two of them a block further
    # into their generation: ragged windows
    seqs = [Sequence(list(range(10, 42)), 96, params), Sequence(list(range(50, 82)), 96, params)]
    seqs += [Sequence(list(range(90, 106)), 112, params), Sequence(list(range(110, 126)), 112, params)]
    for s in seqs:
        s.ignore_eos = True
    _drive(runner, seqs, max_steps=400)
    assert len(sizes) == 1, [c.capacity for c in sizes]
