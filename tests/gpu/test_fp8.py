"""--quantization fp8 on the device: torch._scaled_mm (row-wise scales) runs on Hopper/Ada, CUDA
graphs give the same tokens as eager forwards, and the kernel agrees with its float32 emulation."""

import pytest
import torch
from unit.drive import run_to_completion

from dserve.modeling.cuda_graphs import GraphedModel
from dserve.modeling.fp8 import Fp8Weight, fp8_linear, quantize_fp8
from dserve.plugins import get_registry
from dserve.sequence import Sequence
from dserve_llada.config import LLaDAConfig
from dserve_llada.model import random_llada

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores"
    ),
]

SMALL = dict(
    d_model=512,
    n_layers=4,
    n_heads=8,
    n_kv_heads=8,
    mlp_hidden_size=1024,
    vocab_size=4096,
    embedding_size=4096,
    max_sequence_length=1024,
    rope_theta=500000.0,
    mask_token_id=4095,
    eos_token_id=4094,
)


@pytest.fixture(scope="module")
def model():
    m = random_llada(LLaDAConfig.from_dict(SMALL), dtype=torch.bfloat16, device="cuda", seed=0)
    with torch.no_grad():
        m.model.transformer.ff_out.weight.mul_(40)
    quantize_fp8(m)
    return m


def test_the_kernel_runs_and_agrees_with_the_emulation():
    torch.manual_seed(0)
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    w = Fp8Weight.quantize(torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16) / 20)
    torch.testing.assert_close(fp8_linear(x, w), fp8_linear(x, w, emulate=True), rtol=2e-2, atol=2e-2)


def test_the_model_uses_the_kernel(model):
    block = model.model.transformer.blocks[0]
    assert isinstance(block.qkv_weight, Fp8Weight) and not block.qkv_weight.emulate
    assert not model.model.transformer.ff_out.weight.emulate


@pytest.mark.parametrize("name", ["fastdllm/dual_cache", "fastdllm/prefix_cache", "dinfer/dinfer_blockwise", "llada/reference"])
def test_graphed_fp8_equals_eager(model, name):
    engine, alg = name.split("/")
    spec = get_registry().engine(engine).algorithm(alg)
    extra = {"threshold": 0.7} if engine == "fastdllm" else {}
    params = spec.load_params()(**({"steps": 16} if engine != "dinfer" else {}), block_length=16, **extra)
    prompts = [[1, 2, 3, 4, 5], list(range(10, 40)), [7] * 17]

    def run(m):
        seqs = [Sequence(p, 48, params) for p in prompts]
        out = run_to_completion(spec.load_runner()(m, max_batch_size=4), seqs)
        return [out[s.seq_id] for s in seqs]

    graphed = GraphedModel(model)
    assert run(graphed) == run(model)
    assert graphed._graphs and not graphed.broken
