"""Dream: the model against the published modeling code, its logit shift and cache behaviour, the
`dream` engine against the published diffusion_generate, and the Fast-dLLM engine on Dream.

Fixture data (tests/fixtures/dream/README.md): a tiny random checkpoint in the published format and
the outputs of the published code run once on the CPU in float32.
"""

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dserve.sequence import Sequence
from dserve_dream.model import load_dream
from dserve_dream.params import DreamParams
from dserve_dream.runner import EntropyRunner, MaskGitPlusRunner, OriginRunner, TopKMarginRunner
from dserve_fastdllm.params import FastDLLMParams
from dserve_fastdllm.runner import BasicRunner, DualCacheRunner, PrefixCacheRunner
from unit.drive import run_to_completion

FIXTURE = Path(__file__).parents[1] / "fixtures" / "dream"
RUNNERS = {"origin": OriginRunner, "maskgit_plus": MaskGitPlusRunner, "topk_margin": TopKMarginRunner, "entropy": EntropyRunner}


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def raw_logits() -> dict:
    return load_file(str(FIXTURE / "expected_logits.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_dream(FIXTURE, dtype="float32")


def _shift(raw: torch.Tensor) -> torch.Tensor:
    """The published sampler's alignment: aligned[0] = raw[0], aligned[i] = raw[i-1]."""
    return torch.cat([raw[..., :1, :], raw[..., :-1, :]], dim=-2)


# ---- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["single", "sharded"])
def test_logits_match_published_model(published, raw_logits, variant):
    model = load_dream(FIXTURE if variant == "single" else FIXTURE / "sharded", dtype="float32")
    for case in published["logits"]["cases"]:
        got = model(torch.tensor([case["input_ids"]]))[0]
        torch.testing.assert_close(got, _shift(raw_logits[case["name"]]), atol=1e-4, rtol=1e-4)


def test_logits_are_shifted_by_one_position(model, published, raw_logits):
    case = published["logits"]["cases"][1]
    raw = raw_logits[case["name"]]
    aligned = model(torch.tensor([case["input_ids"]]))[0]
    torch.testing.assert_close(aligned[0], raw[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(aligned[1:], raw[:-1], atol=1e-4, rtol=1e-4)
    # logits_index picks aligned positions, not raw ones
    index = torch.tensor([[0, 3, 9, 18]])
    torch.testing.assert_close(model(torch.tensor([case["input_ids"]]), logits_index=index)[0], aligned[index[0]])


def test_left_padding_with_published_positions(model, published, raw_logits):
    """The published batch path: left pads hidden, positions = cumsum(mask) - 1."""
    case = published["logits"]["left_padded"]
    ids, keys = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"]).bool()
    positions = (keys.long().cumsum(-1) - 1).masked_fill(~keys, 1)
    got = model(ids, positions, attention_mask=keys)
    want = _shift(raw_logits["left_padded"])
    first = int((~keys[1]).sum()) + 1  # row 1: pads, then its first real token's aligned logit is a pad's output
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, first:], want[1, first:], atol=1e-4, rtol=1e-4)


def test_parameter_names_and_shapes_are_the_published_ones(model, published):
    assert set(model.state_dict()) == set(published["checkpoint"]["parameters"])
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (2 * 16, 64) and attn.q_proj.weight.shape == (64, 64)  # GQA 4:2
    assert attn.o_proj.bias is None and attn.q_proj.bias.abs().sum() > 0


def test_cached_forwards_equal_the_full_forward(model):
    """A block (dual cache) or a suffix (prefix cache) forwarded over the cache the full canvas
    wrote gets the same aligned logits as the full forward, its first position included: the
    output one position earlier comes from the stored hidden state."""
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = model.new_kv_cache(rows=2, capacity=24)
    valid = torch.arange(24)[None] < 20  # slots 20..23 hold nothing
    torch.testing.assert_close(model(ids, attention_mask=valid.expand(2, 24), kv_cache=cache), full, atol=1e-5, rtol=1e-5)
    block = model(ids[:, 8:12], torch.arange(8, 12).expand(2, 4), attention_mask=valid.expand(2, 24), kv_cache=cache)
    torch.testing.assert_close(block, full[:, 8:12], atol=1e-5, rtol=1e-5)
    suffix = model(
        ids[:, 8:],
        torch.arange(8, 20).expand(2, 12),
        attention_mask=valid.expand(2, 24),
        kv_cache=cache,
        logits_index=torch.tensor([[0, 5], [0, 11]]),
    )
    torch.testing.assert_close(suffix, torch.stack([full[0, [8, 13]], full[1, [8, 19]]]), atol=1e-5, rtol=1e-5)
    # rows chosen by index (the cache pool's gathered rows): batch row 0 uses cache row 1
    cache.use_rows(torch.tensor([1]))
    one = model(ids[1:, 8:12], torch.arange(8, 12)[None], attention_mask=valid, kv_cache=cache)
    cache.use_rows(None)
    torch.testing.assert_close(one[0], full[1, 8:12], atol=1e-5, rtol=1e-5)


def test_cache_growth_keeps_hidden_states(model):
    from dserve.modeling.cache_pool import CachePool

    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    pool = CachePool(model, 4)
    pool.take()
    cache = pool.reserve(20)
    model(ids, attention_mask=torch.arange(cache.capacity)[None] < 20, kv_cache=cache)
    pool.take()
    grown = pool.reserve(100)  # more rows and positions: contents copied
    valid = torch.arange(grown.capacity)[None] < 20
    grown.use_rows(slice(0, 1))
    block = model(ids[:, 8:12], torch.arange(8, 12)[None], attention_mask=valid, kv_cache=grown)
    torch.testing.assert_close(block, full[:, 8:12], atol=1e-5, rtol=1e-5)


def test_a_plain_kv_cache_is_refused(model):
    from dserve.modeling import KVCache

    plain = KVCache(2, 1, 8, 2, 16, torch.float32, "cpu")
    with pytest.raises(TypeError, match="new_kv_cache"):
        model(torch.tensor([[1, 2, 3]]), kv_cache=plain)


def test_tokenizer_without_remote_code_matches_published(model, published):
    tok, want = model.tokenizer, published["tokenizer"]
    text = tok.apply_chat_template(want["messages"], tokenize=False, add_generation_prompt=True)
    assert text == want["text"]
    assert tok(text, add_special_tokens=False)["input_ids"] == want["ids"]
    assert tok(want["plain"]["text"])["input_ids"] == want["plain"]["ids"]
    assert model.info.mask_id == 260 and model.info.stop_ids == (256, 258)  # EOS, <|im_end|>


def test_dummy_and_bfloat16_loads():
    dummy = load_dream(FIXTURE, dtype="float32", load_format="dummy")
    assert dummy(torch.tensor([[1, 2, 3]])).shape == (1, 3, 272)
    bf16 = load_dream(FIXTURE, dtype="bfloat16")
    assert bf16(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


# ---- the dream engine -----------------------------------------------------------------------


def _params(run: dict) -> DreamParams:
    return DreamParams(
        steps=run["steps"], temperature=run["temperature"], alg_temp=run["alg_temp"], top_p=run["top_p"], top_k=run["top_k"]
    )


def _label(run: dict) -> str:
    extra = "".join(f"-{k}{run[k]}" for k in ("alg_temp", "top_p", "top_k", "seed") if run[k] is not None)
    batch = "-batch2" if len(run["prompt"]) > 1 else ""
    return f"{run['alg']}-G{run['max_new_tokens']}-S{run['steps']}-T{run['temperature']}{extra}{batch}"


_RUNS = json.loads((FIXTURE / "expected.json").read_text())["generate"]


@pytest.mark.parametrize("run", _RUNS, ids=[_label(r) for r in _RUNS])
def test_dream_engine_matches_published_diffusion_generate(model, run):
    """Token for token: greedy runs, and seeded runs (origin's random positions, alg_temp's
    sampled positions, temperature > 0) drawing from the sequence's generator as the published
    code draws from the global one. Batch-of-two runs: the published call left-pads both prompts
    into one batch; here they are two sequences of their own lengths."""
    seqs = [Sequence(p, run["max_new_tokens"], _params(run), seed=run["seed"]) for p in run["prompt"]]
    canvases = run_to_completion(RUNNERS[run["alg"]](model), seqs)
    G = run["max_new_tokens"]
    for seq, want in zip(seqs, run["canvas"]):
        assert canvases[seq.seq_id][:-G] == seq.prompt_ids
        assert canvases[seq.seq_id][-G:] == want[-G:]
        assert seq.nfe <= run["steps"]


def test_dream_engine_is_batch_invariant(model):
    """Mixed prompt lengths, max_tokens, steps and parameters in one batch equal each alone."""
    g = torch.Generator().manual_seed(3)
    specs = [
        (torch.randint(0, 256, (5,), generator=g).tolist(), 16, DreamParams(steps=16)),
        (torch.randint(0, 256, (11,), generator=g).tolist(), 9, DreamParams(steps=4, top_p=0.9)),
        (torch.randint(0, 256, (3,), generator=g).tolist(), 20, DreamParams(steps=30, eps=0.01)),
    ]
    for runner_cls in (EntropyRunner, TopKMarginRunner):
        alone = []
        for prompt, max_tokens, params in specs:
            seq = Sequence(prompt, max_tokens, params)
            alone.append(run_to_completion(runner_cls(model), [seq])[seq.seq_id])
        seqs = [Sequence(p, m, params) for p, m, params in specs]
        together = run_to_completion(runner_cls(model, max_batch_size=4), seqs)
        assert [together[s.seq_id] for s in seqs] == alone


def test_dream_schedule_counts_per_row():
    """int(masked * (1 - s/t)) in float32 of the row's own masks: 512 steps over 512 tokens
    commit nothing at the first step (the published arithmetic, algorithms.md §4)."""
    from dserve_dream.runner import DreamRunner

    class _Model:
        info = type("Info", (), {"mask_id": 0})()
        device = torch.device("cpu")

    runner = EntropyRunner(_Model())
    seq = Sequence([1, 2], 512, DreamParams(steps=512))
    st = runner.init_state(seq)
    seq.engine_state = st
    assert DreamRunner._plan(runner, seq).count == 0
    st.step = 511
    assert DreamRunner._plan(runner, seq).count == 512


def test_params_have_no_blocks_and_one_token_per_step_by_default():
    p = DreamParams()
    assert p.gen_length(37) == 37 and p.total_steps(37) == 37
    assert (p.eps, p.temperature, p.alg_temp, p.top_p, p.top_k) == (1e-3, 0.0, None, None, None)


# ---- Fast-dLLM on Dream ---------------------------------------------------------------------


@pytest.mark.parametrize("runner_cls", [BasicRunner, PrefixCacheRunner, DualCacheRunner])
def test_fastdllm_runs_on_dream_batch_invariantly(model, runner_cls):
    """The unchanged Fast-dLLM engine on aligned logits: completes every block and gives each
    sequence the same tokens alone as in a mixed batch."""
    g = torch.Generator().manual_seed(4)
    specs = [
        (torch.randint(0, 256, (6,), generator=g).tolist(), 16, FastDLLMParams(block_length=8, threshold=0.5)),
        (torch.randint(0, 256, (13,), generator=g).tolist(), 8, FastDLLMParams(block_length=4)),
    ]
    alone = []
    for prompt, max_tokens, params in specs:
        seq = Sequence(prompt, max_tokens, params)
        alone.append(run_to_completion(runner_cls(model), [seq])[seq.seq_id])
    seqs = [Sequence(p, m, params) for p, m, params in specs]
    together = run_to_completion(runner_cls(model, max_batch_size=4), seqs)
    assert [together[s.seq_id] for s in seqs] == alone
    assert all(260 not in c for c in alone)


def test_fastdllm_cached_loops_equal_uncached_when_every_step_starts_a_block(model):
    """Blocks of one token: every step is a block start, whose full forward writes the cache, so
    the cached loops must reproduce the uncached one exactly (the cached forwards' first-position
    logit itself is checked in test_cached_forwards_equal_the_full_forward)."""
    prompt = torch.randint(0, 256, (7,), generator=torch.Generator().manual_seed(5)).tolist()
    params = FastDLLMParams(block_length=1, steps=6)
    out = {}
    for cls in (BasicRunner, DualCacheRunner, PrefixCacheRunner):
        seq = Sequence(prompt, 6, params)
        out[cls] = run_to_completion(cls(model), [seq])[seq.seq_id]
    assert out[BasicRunner] == out[DualCacheRunner] == out[PrefixCacheRunner]


# ---- served ---------------------------------------------------------------------------------


def test_served_with_the_dream_engine_by_default():
    from dserve.plugins import build_registry, create_plugin_manager
    from dserve.service import GenerationService, collect_text
    from dserve.settings import Settings

    service = GenerationService(Settings(model=str(FIXTURE), device="cpu"), build_registry(create_plugin_manager()))
    service.load()
    try:
        choice = service.default_choice()
        assert (choice.engine.name, choice.algorithm.name) == ("dream", "entropy")
        listed = {(a["engine"], a["algorithm"]): a["available"] for a in service.algorithms_for_model()}
        assert listed[("dream", "origin")] and listed[("fastdllm", "dual_cache")]

        async def ask():
            handles = service.submit(
                [257, 117, 115, 101, 114],
                service.resolve(None, None, {"steps": 8}),
                max_tokens=8,
                n=1,
                seed=None,
                stop=[],
                loop=asyncio.get_running_loop(),
            )
            return await collect_text(handles[0])

        assert isinstance(asyncio.run(ask()), str)
    finally:
        service.shutdown()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_dinfer_runs_on_dream(model, cache):
    from dserve_dinfer.params import DInferParams
    from dserve_dinfer.runner import DInferRunner

    seq = Sequence([257, 117, 115, 101, 114], 16, DInferParams(block_length=8, cache=cache))
    canvas = run_to_completion(DInferRunner(model), [seq])[seq.seq_id]
    assert 260 not in canvas[5:]
