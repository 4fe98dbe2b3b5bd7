"""The LLaDA2 MoE model and the `llada2` engine against the published code.

tests/fixtures/llada2/ holds tiny random checkpoints in the published LLaDA2 MoE layout, the
logits of the published modeling code and the token outputs (and forward counts) of its
`generate` at temperature 0 (see its README for how they were made).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dserve.batch import Row, RowBatch, forward
from dserve.modeling.cache_pool import CachePool
from dserve.params import ParamError, resolve_params
from dserve.sequence import Sequence
from dserve_llada2.block_diffusion import LLaDA2BlockDiffusionRunner
from dserve_llada2.config import LLaDA2Config
from dserve_llada2.model import load_llada2
from dserve_llada2.moe import padded_expert_mlp, per_token_reference, sort_by_expert
from dserve_llada2.params import LLaDA2EditingParams, LLaDA2Params
from dserve_llada2.rules import commit_rule, transfer_schedule

FIXTURE = Path(__file__).parent.parent / "fixtures" / "llada2"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_llada2(FIXTURE, dtype="float32")


def _block_mask(length: int, block: int) -> torch.Tensor:
    b = torch.arange(length) // block
    return (b[None, :] <= b[:, None])[None]


# ---- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["main", "sharded", "variant"])
def test_logits_match_the_published_model(variant):
    """Block-causal and bidirectional patterns; the variant switches biases on, qk-norm, the
    shared expert and the dense first layer off, uses one group, top-1 and full-width RoPE."""
    path = {"main": FIXTURE, "sharded": FIXTURE / "sharded", "variant": FIXTURE / "variant"}[variant]
    m = load_llada2(path, dtype="float32")
    expected = load_file(str(FIXTURE / "expected_logits.safetensors"))
    cases = [c for c in EXPECTED["logits"] if c["checkpoint"] == ("variant" if variant == "variant" else "main")]
    assert len(cases) == 2
    for case in cases:
        ids = torch.tensor([case["input_ids"]])
        mask = _block_mask(ids.shape[1], case["block"]) if case["pattern"] == "block8" else None
        got = m(ids, attention_mask=mask)[0]
        torch.testing.assert_close(got, expected[case["name"]], atol=2e-5, rtol=1e-5)


def test_parameter_names_and_config_are_the_published_ones(model):
    assert set(model.state_dict()) == set(EXPECTED["checkpoints"]["main"])
    variant = load_llada2(FIXTURE / "variant", dtype="float32")
    assert set(variant.state_dict()) == set(EXPECTED["checkpoints"]["variant"])
    cfg = model.cfg
    assert (cfg.rotary_dim, cfg.first_k_dense_replace, cfg.num_shared_experts) == (8, 1, 1)
    assert model.info.capabilities == {"block_causal", "kv_cache"}
    assert (model.info.mask_id, model.info.stop_ids) == (250, (251,))
    assert cfg.extra["score_function"] == "sigmoid"  # kept, read by no published code
    with pytest.raises(ValueError, match="not a LLaDA2"):
        LLaDA2Config.from_dict({"architectures": ["LLaDAModelLM"]})


def test_dummy_load_and_bfloat16(model):
    dummy = load_llada2(FIXTURE, load_format="dummy", dtype="float32")
    assert set(dummy.state_dict()) == set(model.state_dict())
    bf16 = load_llada2(FIXTURE, dtype="bfloat16")
    assert bf16.rotary.inv_freq.dtype == torch.float32
    assert bf16(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


# ---- the MoE layer ---------------------------------------------------------------------------


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "padded_bmm"])
def test_moe_batched_experts_equal_a_per_token_reference(model, grouped):
    """The sort-by-expert path (the one the GPU runs: grouped GEMM, or one padded batched GEMM)
    = each token through each of its chosen experts one at a time."""
    moe = model.moe_layers()[0]
    x = torch.randn(3, 11, model.cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    saved = moe.grouped
    moe.grouped = grouped
    try:
        got = moe(x)
    finally:
        moe.grouped = saved
    torch.testing.assert_close(got, per_token_reference(moe, x), atol=1e-5, rtol=1e-5)


def test_router_obeys_the_group_limit_and_the_bias_steers_only_the_choice(model):
    moe = model.moe_layers()[0]
    gate = moe.gate
    x = torch.randn(64, model.cfg.hidden_size, generator=torch.Generator().manual_seed(4))
    ids, weights = gate(x)
    per_group = model.cfg.num_experts // model.cfg.n_group
    groups = (ids // per_group).tolist()
    assert all(len(set(g)) <= model.cfg.topk_group for g in groups)
    torch.testing.assert_close(weights.sum(-1), torch.full((64,), model.cfg.routed_scaling_factor))
    scores = torch.sigmoid(x @ gate.weight.T)
    chosen = scores.gather(1, ids)
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True) * model.cfg.routed_scaling_factor)


def test_sort_by_expert_offsets():
    ids = torch.tensor([[2, 0], [2, 1], [0, 2]])
    order, offsets = sort_by_expert(ids, 4)
    assert ids.reshape(-1)[order].tolist() == [0, 0, 1, 2, 2, 2]
    assert offsets.tolist() == [2, 3, 6, 6]
    x = torch.randn(6, 16)
    w1, w2 = torch.randn(4, 8, 16), torch.randn(4, 16, 4)
    out = padded_expert_mlp(x, w1, w2, offsets)
    ref0 = (torch.nn.functional.silu(x[:2] @ w1[0, :4].T) * (x[:2] @ w1[0, 4:].T)) @ w2[0].T
    torch.testing.assert_close(out[:2], ref0)


# ---- attention over the cache ----------------------------------------------------------------


def test_block_causal_rows_over_the_cache_equal_one_block_causal_pass(model):
    """The core's block-causal Row: a prefill of whole blocks, then two blocks at once over the
    cache = the published full-window forward under the block-causal mask."""
    ids = torch.tensor(EXPECTED["logits"][0]["input_ids"][:40])
    want = model(ids[None], attention_mask=_block_mask(40, 8))[0]
    pool = CachePool(model, 2)
    row = pool.take(48)
    forward(model, RowBatch([Row(ids[:16], start=0, block=8, cache_row=row)]), pool)
    got = forward(model, RowBatch([Row(ids[16:40], start=16, block=8, cache_row=row, logits=(8, 24))]), pool)[0]
    torch.testing.assert_close(got, want[24:40], atol=2e-5, rtol=1e-5)


# ---- the published loop ----------------------------------------------------------------------


@pytest.fixture
def eos_as(model):
    original = model.info

    def use(eos):
        model.info = dataclasses.replace(original, eos_id=eos, stop_ids=(eos,))

    yield use
    model.info = original


def _sequence(case: dict, **over) -> Sequence:
    fields = {
        "temperature": 0.0,
        "steps": case["steps"],
        "block_length": case["block_length"],
        "threshold": case["threshold"],
        "minimal_topk": case.get("minimal_topk", 1),
        "eos_early_stop": case["eos_early_stop"],
    }
    params = LLaDA2Params(**{**fields, **over})
    return Sequence(case["prompt_ids"], case["gen_length"], params, seed=0)


def _run(runner, seqs: list[Sequence], stagger: int = 0) -> dict[int, tuple[list[int], int]]:
    """Admit (one new sequence every `stagger` steps, or all at once), step to completion; per
    sequence its committed tokens up to the first gap and its forward count."""
    pending, slots, nfe, out = list(seqs), {}, {}, {}
    step = 0
    while pending or runner.sequences:
        while pending and (not stagger or step % stagger == 0 or not runner.sequences):
            seq = pending.pop(0)
            runner.admit(seq)
            slots[seq.seq_id], nfe[seq.seq_id] = {}, 0
            if stagger:
                break
        for r in runner.step():
            slots[r.seq.seq_id].update(dict(r.committed))
            nfe[r.seq.seq_id] += r.nfe
            if r.finished:
                got = slots[r.seq.seq_id]
                out[r.seq.seq_id] = ([got[i] for i in range(len(got)) if i in got], nfe[r.seq.seq_id])
                runner.release(r.seq)
        step += 1
        assert step < 5000
    return out


def _cut(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("case", EXPECTED["loops"], ids=lambda c: c["name"])
def test_tokens_and_forwards_equal_the_published_generate(model, eos_as, case):
    eos_as(case["eos"])
    seq = _sequence(case)
    tokens, nfe = _run(LLaDA2BlockDiffusionRunner(model, max_batch_size=2), [seq])[seq.seq_id]
    assert _cut(tokens, case["eos"]) == case["output"]
    assert nfe == case["nfe"]


def _editing_sequence(case: dict) -> Sequence:
    fields = ("block_length", "threshold", "editing_threshold", "max_post_steps", "num_to_transfer", "eos_early_stop")
    params = LLaDA2EditingParams(temperature=0.0, **{k: case[k] for k in fields})
    return Sequence(case["prompt_ids"], case["gen_length"], params, seed=0)


@pytest.mark.parametrize("case", EXPECTED["editing"], ids=lambda c: c["name"])
def test_editing_tokens_equal_the_published_llada21_generate(model, eos_as, case):
    """LLaDA2.1's loop; the forward count is the published one, except that dserve always stops
    after the block holding EOS (the published loop without eos_early_stop runs on to the
    canvas end, which cannot change the answer cut at that EOS)."""
    eos_as(case["eos"])
    seq = _editing_sequence(case)
    tokens, nfe = _run(LLaDA2BlockDiffusionRunner(model, max_batch_size=2), [seq])[seq.seq_id]
    assert _cut(tokens, case["eos"]) == case["output"]
    stopped_early = case["eos"] in case["output"] and not case["eos_early_stop"]
    assert nfe <= case["nfe"] if stopped_early else nfe == case["nfe"]


def test_batch_invariance_with_mixed_prompts_and_parameters(model):
    """Every fixture case with the checkpoint's EOS (prompt lengths 10, 16, 21; block lengths
    4, 8, 16; thresholds, steps, minimal_topk; LLaDA2.0's and 2.1's loops in one runner) decoded
    together, admitted at once and staggered: each gives exactly what it gives alone (the
    published loop's tokens)."""
    cases = [c for c in EXPECTED["loops"] if c["eos"] == 251] + [c for c in EXPECTED["editing"] if c["eos"] == 251]
    for stagger in (0, 3):
        seqs = [_editing_sequence(c) if "editing_threshold" in c else _sequence(c) for c in cases]
        out = _run(LLaDA2BlockDiffusionRunner(model, max_batch_size=len(seqs)), seqs, stagger=stagger)
        for seq, case in zip(seqs, cases):
            assert _cut(out[seq.seq_id][0], 251) == case["output"], case["name"]


def test_seeded_sampling_is_reproducible_and_batch_invariant(model):
    case = EXPECTED["loops"][0]

    def one(batch_mates: int):
        first = _sequence(case, temperature=1.0, top_k=20, top_p=0.9)
        first.seed = 5
        mates = [_sequence(c) for c in EXPECTED["loops"][3 : 3 + batch_mates]]
        return _run(LLaDA2BlockDiffusionRunner(model, max_batch_size=4), [first, *mates])[first.seq_id][0]

    sampled = one(0)
    assert sampled == one(2)
    assert _cut(sampled, 251) != case["output"]  # it does sample (the greedy answer differs)


def test_commit_rule_and_schedule():
    assert transfer_schedule(32, 5) == [7, 7, 6, 6, 6]
    assert transfer_schedule(8, 10)[-2:] == [0, 0]
    conf = torch.tensor([0.99, 0.5, 0.97, 0.2, 0.96])
    masked = torch.tensor([True, True, True, True, False])
    # 2 above 0.95 among the masked (0.96 is not masked): enough for a quota of 2, all of them
    assert commit_rule(conf, masked, quota=2, threshold=0.95).tolist() == [True, False, True, False, False]
    # a quota of 3 is not met: the 3 most confident masked
    assert commit_rule(conf, masked, quota=3, threshold=0.95).tolist() == [True, True, True, False, False]
    # quota above the mask count: every masked one
    assert commit_rule(conf, masked, quota=9, threshold=1.0).tolist() == [True, True, True, True, False]


def test_parameters_are_validated():
    p = resolve_params(LLaDA2Params, None, algorithm="llada2/llada2")
    assert (p.steps, p.block_length, p.threshold, p.minimal_topk, p.eos_early_stop) == (32, 32, 0.95, 1, False)
    assert p.gen_length(37) == 37 and p.block_steps(37) == 32
    assert LLaDA2Params(minimal_topk=4).block_steps(40) == 10
    with pytest.raises(ParamError, match="threshold"):
        resolve_params(LLaDA2Params, {"threshold": 1.5})
    with pytest.raises(ParamError, match="top_p"):
        resolve_params(LLaDA2Params, {"top_p": 0})
