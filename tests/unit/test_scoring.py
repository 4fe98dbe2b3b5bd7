"""The scoring runners against the published LLaDA estimator and greedy check (fixture from
ML-GSAI/LLaDA get_log_likelihood.py / eval_llada.py, tests/fixtures/scoring/README.md), and the
autoregressive scorer against the Nemotron AR runner."""

import json
import math
from pathlib import Path

import pytest
import torch

from dserve.scoring.monte_carlo import estimate
from dserve.scoring.params import ScoringParams, default_mc_batch_size
from dserve.scoring.runner import AutoregressiveScorer, MonteCarloScorer
from dserve.scoring.sequence import ScoreSequence

FIXTURES = Path(__file__).parents[1] / "fixtures"
EXPECTED = json.loads((FIXTURES / "scoring" / "expected.json").read_text())


def _load(family):
    if family == "llada":
        from dserve_llada.model import load_llada

        return load_llada(FIXTURES / "llada_tiny_random", dtype="float32")
    from dserve_dream.model import load_dream

    return load_dream(FIXTURES / "dream", dtype="float32")


@pytest.fixture(scope="module", params=["llada", "dream"])
def family_model(request):
    return request.param, _load(request.param)


def _score(runner, seqs, max_steps=10_000):
    for s in seqs:
        runner.admit(s)
    nfe = {s.seq_id: 0 for s in seqs}
    for _ in range(max_steps):
        if not runner.sequences:
            break
        for r in runner.step():
            nfe[r.seq.seq_id] += r.nfe
            if r.finished:
                runner.release(r.seq)
    assert not runner.sequences
    return [s.result for s in seqs], nfe


def _seq(case, **override):
    p = dict(mc_num=case["mc_num"], mc_batch_size=case["batch_size"], cfg_scale=case["cfg_scale"]) | override
    ctx = case["context"]
    return ScoreSequence(ctx + case["continuation"], 1, ScoringParams(**p), seed=case["seed"], context_len=len(ctx))


def test_equals_the_published_estimator_and_greedy_check(family_model):
    family, model = family_model
    cases = EXPECTED["cases"][family]
    seqs = [_seq(c) for c in cases]
    results, _ = _score(MonteCarloScorer(model), seqs)  # every case in one running batch
    for case, result in zip(cases, results):
        assert result.loglikelihood == pytest.approx(case["loglikelihood"], rel=1e-5, abs=1e-5), case["case"]
        assert result.is_greedy is case["is_greedy"], case["case"]
    assert any(c["is_greedy"] for c in cases) and not all(c["is_greedy"] for c in cases)


def test_each_case_alone_equals_the_batch(family_model):
    family, model = family_model
    cases = EXPECTED["cases"][family][:2]
    together, _ = _score(MonteCarloScorer(model), [_seq(c) for c in cases])
    for case, joint in zip(cases, together):
        (alone,), _ = _score(MonteCarloScorer(model), [_seq(case)])
        assert alone.loglikelihood == pytest.approx(joint.loglikelihood, rel=1e-5)


def test_standard_error_and_forward_count(family_model):
    family, model = family_model
    case = EXPECTED["cases"][family][0]  # mc_num 128 in mini-batches of 16, 3 continuation tokens
    (result,), nfe = _score(MonteCarloScorer(model), [_seq(case, check_greedy=False)])
    assert result.is_greedy is None
    assert result.stderr is not None and 0 < result.stderr < abs(result.loglikelihood)
    assert result.nfe == 128
    (single,), _ = _score(MonteCarloScorer(model), [_seq(case, mc_num=1, mc_batch_size=1, check_greedy=False)])
    assert single.stderr is None


def test_estimate_and_its_standard_error():
    value, stderr = estimate([[1.0, 3.0], [2.0, 6.0]])
    assert value == -3.0
    assert stderr == pytest.approx(math.sqrt(((2**2 + 0 + 1 + 3**2) / 3) / 4))


def test_default_mini_batch_divides_mc_num():
    assert [default_mc_batch_size(n) for n in (1, 12, 128, 20, 17)] == [1, 12, 16, 10, 1]
    with pytest.raises(ValueError, match="must divide"):
        ScoringParams(mc_num=10, mc_batch_size=4)


@pytest.fixture(scope="module")
def nemotron():
    from dserve_nemotron.model import load_nemotron

    return load_nemotron(FIXTURES / "nemotron", dtype="float32")


def test_autoregressive_scores_are_exact_log_probabilities(nemotron):
    """The scorer's log-probability of a continuation equals the sum of the AR runner's own
    next-token log-probabilities (one causal pass over a cache, token by token), and the greedy
    AR decode is the one continuation flagged greedy."""
    from dserve.sequence import Sequence
    from dserve_nemotron.autoregressive import AutoregressiveRunner
    from dserve_nemotron.params import AutoregressiveParams

    context = [5, 6, 7, 8, 9]
    gen = Sequence(context, max_tokens=6, params=AutoregressiveParams(), ignore_eos=True)
    runner = AutoregressiveRunner(nemotron)
    runner.admit(gen)
    greedy: list[int] = []
    while len(greedy) < 6:
        (r,) = runner.step()
        greedy.extend(t for _, t in r.committed)
    # token by token with a plain causal forward: the reference log-probabilities
    ids = torch.tensor([context + greedy])
    L = ids.shape[1]
    mask = torch.ones(L, L, dtype=torch.bool).tril()[None]
    logits = nemotron(ids, torch.arange(L)[None], attention_mask=mask)[0]
    reference = torch.log_softmax(logits[len(context) - 1 : -1].float(), -1).gather(-1, ids[0, len(context) :, None]).sum()
    other = greedy[:3] + [(greedy[3] + 1) % 200] + greedy[4:]
    seqs = [ScoreSequence(context + cont, 1, ScoringParams(), context_len=len(context)) for cont in (greedy, other, greedy[:2])]
    results, nfe = _score(AutoregressiveScorer(nemotron), seqs)
    assert results[0].loglikelihood == pytest.approx(float(reference), rel=1e-5)
    assert [r.is_greedy for r in results] == [True, False, True]
    assert results[1].loglikelihood < results[0].loglikelihood
    assert all(r.stderr is None for r in results) and set(nfe.values()) == {1}


def test_left_to_right_values(family_model):
    """Token i's value is log p(x_i) read at position i of x_<i followed by masks; texts of
    different lengths share the scorer's forwards."""
    from dserve.scoring.runner import LeftToRightScorer

    family, model = family_model
    texts = [[5, 6, 7, 8, 9, 10], [20, 21, 22]]
    seqs = [ScoreSequence(t, 1, ScoringParams(), context_len=1, top_n=2) for t in texts]
    results, nfe = _score(LeftToRightScorer(model), seqs)
    for text, result in zip(texts, results):
        assert len(result.token_logprobs) == len(result.top_logprobs) == len(text) - 1
        for i in range(1, len(text)):
            canvas = torch.tensor([text[:i] + [model.info.mask_id] * (len(text) - i)])
            logp = torch.log_softmax(model(canvas)[0, i].float(), -1)
            assert result.token_logprobs[i - 1] == pytest.approx(float(logp[text[i]]), rel=1e-5, abs=1e-5)
            assert len(result.top_logprobs[i - 1]) == 2
            assert max(result.top_logprobs[i - 1].values()) == pytest.approx(float(logp.max()), rel=1e-5, abs=1e-5)
        assert result.loglikelihood == pytest.approx(sum(result.token_logprobs))
    assert [nfe[s.seq_id] for s in seqs] == [5, 2]


def test_reference_loop_reports_the_probability_at_commit():
    """Each committed token's log-probability is the one the model gave it on the canvas of the
    step that committed it (recomputed here from a snapshot of that canvas)."""
    from dserve.sequence import Sequence
    from dserve_llada.params import ReferenceParams
    from dserve_llada.reference import ReferenceRunner

    model = _load("llada")
    seq = Sequence([5, 6, 7, 8], max_tokens=8, params=ReferenceParams(steps=4, block_length=8, temperature=0.0))
    seq.logprobs = 3
    runner = ReferenceRunner(model)
    runner.admit(seq)
    checked = 0
    while runner.sequences:
        before = seq.engine_state.canvas.clone()
        (result,) = runner.step()
        assert result.logprobs is not None and len(result.logprobs) == len(result.committed) == 2
        logp = torch.log_softmax(model(before[None])[0].float(), -1)
        for (offset, token), (value, top) in zip(result.committed, result.logprobs):
            assert value == pytest.approx(float(logp[seq.prompt_len + offset, token]), rel=1e-5, abs=1e-5)
            assert len(top) == 3 and max(top.values()) == pytest.approx(value, abs=1e-6)  # greedy: the argmax
            checked += 1
        if result.finished:
            runner.release(seq)
    assert checked == 8


def test_autoregressive_runner_logprobs_equal_the_scorer(nemotron):
    """Two paths to the same numbers: the AR decode's reported log-probabilities (over a KV
    cache, token by token) and the scorer's per-token values (one causal pass)."""
    from dserve.sequence import Sequence
    from dserve_nemotron.autoregressive import AutoregressiveRunner
    from dserve_nemotron.params import AutoregressiveParams

    context = [5, 6, 7, 8, 9]
    gen = Sequence(context, max_tokens=5, params=AutoregressiveParams(), ignore_eos=True)
    gen.logprobs = 0
    runner = AutoregressiveRunner(nemotron)
    runner.admit(gen)
    tokens, values = [], []
    while len(tokens) < 5:
        (r,) = runner.step()
        tokens += [t for _, t in r.committed]
        values += [v for v, _ in r.logprobs]
    scored = ScoreSequence(context + tokens, 1, ScoringParams(), context_len=len(context), top_n=0)
    (result,), _ = _score(AutoregressiveScorer(nemotron), [scored])
    assert result.token_logprobs == pytest.approx(values, abs=1e-5)


def test_linear_spec_logprobs_equal_the_autoregressive_scorer(nemotron):
    """Self-speculation at temperature 0 commits the greedy AR tokens; each reports the
    probability of the causal verify row (or the prefill) that produced it: the AR scorer's."""
    from dserve.sequence import Sequence
    from dserve_nemotron.linear_spec import LinearSpecRunner
    from dserve_nemotron.params import LinearSpecParams

    context = [5, 6, 7, 8, 9]
    gen = Sequence(context, max_tokens=8, params=LinearSpecParams(block_length=4), ignore_eos=True)
    gen.logprobs = 0
    runner = LinearSpecRunner(nemotron)
    runner.admit(gen)
    tokens, values = [], []
    while runner.sequences:
        (r,) = runner.step()
        tokens += [t for _, t in r.committed]
        values += [v for v, _ in r.logprobs]
        if r.finished:
            runner.release(gen)
    scored = ScoreSequence(context + tokens, 1, ScoringParams(), context_len=len(context), top_n=0)
    (result,), _ = _score(AutoregressiveScorer(nemotron), [scored])
    assert result.token_logprobs == pytest.approx(values, abs=1e-4)


def test_every_built_in_runner_reports_logprobs():
    from dserve.plugins import get_registry

    registry = get_registry()
    runners = {f"{e.name}/{a.name}": a.load_runner() for e in registry.engines.values() for a in e.algorithms}
    assert runners and all(r.reports_logprobs for r in runners.values()), [
        k for k, r in runners.items() if not r.reports_logprobs
    ]
