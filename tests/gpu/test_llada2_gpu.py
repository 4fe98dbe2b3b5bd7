"""LLaDA2 on the GPU (run on the device machine: `pytest -m gpu tests/gpu/test_llada2_gpu.py`):
the MoE layer's GPU kernels against the per-token reference, the published loop's tokens on CUDA,
and batch invariance under CUDA graphs."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from unit.drive import run_to_completion

from dserve.loader import model_for_runner
from dserve.sequence import Sequence
from dserve_llada2.block_diffusion import LLaDA2BlockDiffusionRunner
from dserve_llada2.config import LLaDA2Config
from dserve_llada2.model import load_llada2, random_llada2
from dserve_llada2.moe import per_token_reference
from dserve_llada2.params import LLaDA2Params

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FIXTURE = Path(__file__).parent.parent / "fixtures" / "llada2"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
MINI_LIKE = json.loads((Path(__file__).parents[2] / "benchmarks" / "shapes" / "llada2-mini" / "config.json").read_text())


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped_mm", "padded_bmm"])
def test_moe_on_the_gpu_equals_the_per_token_reference(grouped):
    """bf16, LLaDA2.0-mini's expert count and widths (two layers): many tokens, most experts hit."""
    cfg = LLaDA2Config.from_dict({**MINI_LIKE, "num_hidden_layers": 2, "vocab_size": 1024})
    model = random_llada2(cfg, dtype=torch.bfloat16, device="cuda")
    moe = model.moe_layers()[0]
    if grouped and not moe.grouped:
        pytest.skip("torch._grouped_mm does not run bf16 on this GPU")
    moe.grouped = grouped
    x = torch.randn(4, 96, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        got, want = moe(x).float(), per_token_reference(moe, x[:, :24]).float()
    torch.testing.assert_close(got[:, :24], want, atol=3e-2, rtol=3e-2)


def test_published_loop_tokens_on_cuda_in_float32():
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_llada2(FIXTURE, dtype="float32", device="cuda")
    original = model.info
    for case in EXPECTED["loops"][::3]:
        model.info = dataclasses.replace(original, eos_id=case["eos"], stop_ids=(case["eos"],))
        params = LLaDA2Params(
            temperature=0.0,
            steps=case["steps"],
            block_length=case["block_length"],
            threshold=case["threshold"],
            minimal_topk=case.get("minimal_topk", 1),
            eos_early_stop=case["eos_early_stop"],
        )
        seq = Sequence(case["prompt_ids"], case["gen_length"], params, seed=0)
        runner = LLaDA2BlockDiffusionRunner(model_for_runner(model, LLaDA2BlockDiffusionRunner), max_batch_size=2)
        canvas = run_to_completion(runner, [seq])[seq.seq_id][seq.prompt_len : seq.prompt_len + seq.gen_length]
        eos = case["eos"]
        got = canvas[: canvas.index(eos) + 1] if eos in canvas else canvas
        assert got == case["output"], case["name"]


def test_batch_invariance_under_cuda_graphs_in_bfloat16():
    cfg = LLaDA2Config.from_dict({**MINI_LIKE, "num_hidden_layers": 3, "vocab_size": 157184})
    model = random_llada2(cfg, dtype=torch.bfloat16, device="cuda")
    graphed = model_for_runner(model, LLaDA2BlockDiffusionRunner)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1000, 30000, (n,), generator=g).tolist() for n in (7, 40, 64, 33, 90, 12)]
    params = LLaDA2Params(block_length=32, steps=8, threshold=0.9)
    alone = {}
    for p in prompts:
        seq = Sequence(p, 64, params, ignore_eos=True)
        alone[len(p)] = run_to_completion(LLaDA2BlockDiffusionRunner(graphed, max_batch_size=8), [seq])[seq.seq_id]
    seqs = [Sequence(p, 64, params, ignore_eos=True) for p in prompts]
    together = run_to_completion(LLaDA2BlockDiffusionRunner(graphed, max_batch_size=8), seqs)
    for seq in seqs:
        assert together[seq.seq_id] == alone[seq.prompt_len]
