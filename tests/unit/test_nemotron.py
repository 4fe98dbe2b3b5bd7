"""The Nemotron diffusion model and the `nemotron` engine against the published semantics.

tests/fixtures/nemotron/ holds a tiny random checkpoint in the Nemotron-Labs-Diffusion format
(and a research DiffEncoderModel variant), logits of the reference model and the token outputs
of the published loops at temperature 0 (see its README for how they were made).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from dserve.params import ParamError, resolve_params
from dserve.sequence import Sequence
from dserve_nemotron.autoregressive import AutoregressiveRunner
from dserve_nemotron.block_diffusion import BlockDiffusionRunner
from dserve_nemotron.linear_spec import LinearSpecRunner
from dserve_nemotron.model import load_nemotron
from dserve_nemotron.params import AutoregressiveParams, BlockDiffusionParams, LinearSpecParams

FIXTURE = Path(__file__).parent.parent / "fixtures" / "nemotron"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RUNNERS = {
    "block_diffusion": (BlockDiffusionRunner, BlockDiffusionParams),
    "ar": (AutoregressiveRunner, AutoregressiveParams),
    "linear_spec": (LinearSpecRunner, LinearSpecParams),
}


@pytest.fixture(scope="module")
def model():
    return load_nemotron(FIXTURE, dtype="float32")


def _pattern(case: dict, length: int) -> torch.Tensor | None:
    if case["pattern"] == "bidirectional":
        return None
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    if case["pattern"] == "prefix_then_block":
        mask[case["prefix"] :, case["prefix"] :] = True
    return mask[None]


# ---- the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["single", "sharded", "research"])
def test_logits_match_the_reference_model(variant):
    path = {"single": FIXTURE, "sharded": FIXTURE / "sharded", "research": FIXTURE / "research"}[variant]
    m = load_nemotron(path, dtype="float32")
    expected = load_file(str(FIXTURE / "expected_logits.safetensors"))
    cases = [c for c in EXPECTED["logits"] if c["checkpoint"] == ("research" if variant == "research" else "main")]
    assert len(cases) == 3
    for case in cases:
        ids = torch.tensor([case["input_ids"]])
        got = m(ids, attention_mask=_pattern(case, ids.shape[1]))[0]
        torch.testing.assert_close(got, expected[case["name"]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["main", "research"])
def test_unfused_projections_give_the_same_logits(variant):
    """Loading fuses q/k/v and gate/up into one GEMM each (views of the published weights);
    one GEMM per projection again (what weight-only quantization needs) computes the same."""
    m = load_nemotron(FIXTURE if variant == "main" else FIXTURE / "research", dtype="float32")
    assert m.encoder.layers[0].self_attn.qkv_weight is not None and m.encoder.layers[0].gate_up_weight is not None
    ids = torch.tensor([list(range(2, 40))])
    fused = m(ids)
    m.unfuse_projections()
    torch.testing.assert_close(m(ids), fused, atol=1e-5, rtol=1e-5)


def test_parameter_names_are_the_published_ones(model):
    assert set(model.state_dict()) == set(EXPECTED["checkpoint"]["parameters"])
    research = load_nemotron(FIXTURE / "research", dtype="float32")
    assert set(research.state_dict()) == set(EXPECTED["checkpoint"]["research_parameters"])
    assert model.causal_prefix and not research.causal_prefix
    assert model.info.capabilities == {"block_causal", "kv_cache"}


def test_block_over_cache_equals_one_pass_with_causal_prefix_and_bidirectional_block(model):
    """Prefix encoded causally into the cache, then the block forwarded over it (bidirectional
    inside, the cache seen whole) = one full pass with that pattern (the fixture's logits)."""
    case = next(c for c in EXPECTED["logits"] if c["name"] == "main/prefix_then_block")
    ids, p = torch.tensor([case["input_ids"]]), case["prefix"]
    L = ids.shape[1]
    cache = model.new_kv_cache(rows=1, capacity=64)
    keys = torch.arange(64)
    causal = keys[None, None, :] <= torch.arange(p)[None, :, None]
    model(ids[:, :p], torch.arange(p)[None], attention_mask=causal, kv_cache=cache)
    block_keys = (keys < L).expand(1, L - p, 64)
    got = model(ids[:, p:], torch.arange(p, L)[None], attention_mask=block_keys, kv_cache=cache)[0]
    want = load_file(str(FIXTURE / "expected_logits.safetensors"))[case["name"]][p:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_dummy_load_and_bfloat16(model):
    dummy = load_nemotron(FIXTURE, dtype="float32", load_format="dummy")
    assert set(dummy.state_dict()) == set(model.state_dict())
    bf16 = load_nemotron(FIXTURE, dtype="bfloat16")
    assert bf16.rotary.inv_freq.dtype == torch.float32
    assert bf16(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


# ---- the loops -------------------------------------------------------------------------------


def _sequence(case: dict) -> Sequence:
    _, params_cls = RUNNERS[case["algo"]]
    fields = {k: case[k] for k in ("block_length", "threshold", "steps") if k in case}
    params = params_cls(temperature=0.0, **fields)
    max_tokens = case.get("gen_length") or case["max_tokens"]
    return Sequence(case["prompt"], max_tokens, params, seed=0)


def _run(runner, seqs: list[Sequence], stagger: int = 0) -> dict[int, tuple[list[int], int]]:
    """Admit (one new sequence every `stagger` steps, or all at once), step to completion;
    per sequence: its committed tokens up to the first gap, and its NFE."""
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


@pytest.fixture
def eos_as(model):
    original = model.info

    def use(eos):
        model.info = dataclasses.replace(original, eos_id=eos, stop_ids=(eos,))

    yield use
    model.info = original


@pytest.mark.parametrize("case", EXPECTED["loops"], ids=lambda c: c["name"])
def test_tokens_equal_the_published_loop(model, eos_as, case):
    eos_as(case["eos"])
    runner_cls, _ = RUNNERS[case["algo"]]
    seq = _sequence(case)
    tokens, nfe = _run(runner_cls(model, max_batch_size=4), [seq])[seq.seq_id]
    assert _cut(tokens, case["eos"]) == case["output"]
    if case["algo"] == "block_diffusion":
        # it skips forwards that change no output token: re-encoding the last block (ended by
        # EOS or the canvas end), and denoising a block whose seed is already EOS
        assert case["nfe"] - 2 <= nfe < case["nfe"]
    else:
        assert nfe == case["nfe"]


@pytest.mark.parametrize("algo", sorted(RUNNERS))
def test_batch_invariance_with_mixed_prompts_and_parameters(model, algo):
    """Every fixture case of one algorithm (prompt lengths 10 and 24, different block lengths,
    thresholds, steps) decoded together, admitted at different steps: each gives exactly what it
    gives alone (the published loop's tokens)."""
    cases = [c for c in EXPECTED["loops"] if c["algo"] == algo and c["eos"] == 11]
    runner_cls, _ = RUNNERS[algo]
    seqs = [_sequence(c) for c in cases]
    for stagger in (0, 3):
        seqs = [_sequence(c) for c in cases]
        out = _run(runner_cls(model, max_batch_size=len(seqs)), seqs, stagger=stagger)
        for seq, case in zip(seqs, cases):
            assert out[seq.seq_id][0] == case["output"], case["name"]


def test_linear_spec_reproduces_greedy_autoregressive_decoding(model):
    prompts = [c["prompt"] for c in EXPECTED["loops"] if c["algo"] == "block_diffusion"][:4]
    ar = [Sequence(p, 24, AutoregressiveParams()) for p in prompts]
    ls = [Sequence(p, 24, LinearSpecParams(block_length=6)) for p in prompts]
    got_ar = _run(AutoregressiveRunner(model), ar)
    got_ls = _run(LinearSpecRunner(model), ls)
    for a, s in zip(ar, ls):
        assert got_ar[a.seq_id][0] == got_ls[s.seq_id][0]
        assert got_ls[s.seq_id][1] < got_ar[a.seq_id][1] * 2 + 1  # 2 NFE per round, >= 1 token each


def test_seeded_sampling_is_reproducible_and_batch_invariant(model):
    prompt = EXPECTED["loops"][0]["prompt"]

    def one(batch_mates: int):
        params = BlockDiffusionParams(temperature=1.0, block_length=8, threshold=0.5)
        seqs = [Sequence(prompt, 16, params, seed=5)] + [Sequence(prompt[:-2], 24, params, seed=9) for _ in range(batch_mates)]
        return _run(BlockDiffusionRunner(model, max_batch_size=4), seqs)[seqs[0].seq_id][0]

    assert one(0) == one(2)


def test_parameters_are_validated():
    p = resolve_params(BlockDiffusionParams, None, algorithm="nemotron/block_diffusion")
    assert (p.block_length, p.threshold, p.temperature, p.causal_context) == (32, 0.9, 0.0, None)
    assert resolve_params(LinearSpecParams, None).threshold == 0.0
    with pytest.raises(ParamError, match="threshold"):
        resolve_params(BlockDiffusionParams, {"threshold": 1.5})
    with pytest.raises(ParamError, match="block_length"):
        resolve_params(LinearSpecParams, {"block_length": 1})
    assert AutoregressiveParams().gen_length(37) == 37  # no rounding to blocks


# ---- serving ---------------------------------------------------------------------------------


def test_server_picks_nemotron_and_refuses_dual_cache_with_the_reason():
    """A real server on the fixture checkpoint: no --engine gives nemotron/block_diffusion;
    fastdllm/dual_cache gets a 400 that names the missing capability."""
    from e2e.server import ServerProcess

    from dserve_llada import EMBEDDED_MODEL_DIR

    # the fixture has no tokenizer; the byte-level one of the embedded model maps plain text to
    # byte ids, inside this checkpoint's 256-token vocabulary
    srv = ServerProcess("--model", str(FIXTURE), "--tokenizer", str(EMBEDDED_MODEL_DIR), "--device", "cpu")
    try:
        algos = httpx.get(srv.url + "/generation/algorithms").json()
        rows = algos["algorithms"] if isinstance(algos, dict) else algos
        default = next(r for r in rows if r["default"])
        assert (default["engine"], default["algorithm"]) == ("nemotron", "block_diffusion")
        dual = next(r for r in rows if r["algorithm"] == "dual_cache")
        assert not dual["available"] and dual["missing_capabilities"] == ["bidirectional"]

        model_id = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        body = {"model": model_id, "prompt": "hello world", "max_tokens": 8}
        ok = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["completion_tokens"] >= 1
        for algo in ("ar", "linear_spec"):
            r = httpx.post(srv.url + "/v1/completions", json={**body, "generation_algorithm": algo}, timeout=60)
            assert r.status_code == 200, r.text

        bad = httpx.post(srv.url + "/v1/completions", json={**body, "engine": "fastdllm", "generation_algorithm": "dual_cache"})
        assert bad.status_code == 400
        err = bad.json()["error"]
        assert "bidirectional" in err["message"] and "block_causal" in err["message"], err
        assert err["code"] == "unsupported_algorithm"
    finally:
        srv.stop()
