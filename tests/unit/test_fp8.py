"""--quantization fp8: e4m3 weights and activations with row-wise scales (dserve.modeling.fp8),
through torch._scaled_mm where it runs (the CPU here) and the float32 emulation it is checked
against; the embedded model keeps its answers, fused projections stay fused."""

import pytest
import torch

from dserve.modeling.fp8 import E4M3, Fp8Linear, Fp8Weight, fp8_linear, quantize_fp8, quantize_rows
from dserve.modeling.quantization import quantize_weights
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada
from unit.drive import run_to_completion


def _answers(model, texts):
    """The dual cache's answers (threshold 0.9, block 32) to chat prompts."""
    from dserve.modeling.tokenizer import chat_prompt_ids
    from dserve.params import resolve_params
    from dserve.sequence import Sequence
    from dserve_fastdllm.params import FastDLLMParams
    from dserve_fastdllm.runner import DualCacheRunner

    prompts = [chat_prompt_ids(model.tokenizer, [{"role": "user", "content": t}]) for t in texts]
    params = resolve_params(FastDLLMParams, {"threshold": 0.9, "block_length": 32})
    seqs = [Sequence(list(p), 32, params) for p in prompts]
    out = run_to_completion(DualCacheRunner(model, max_batch_size=8), seqs)
    return [model.tokenizer.decode([t for t in out[s.seq_id][len(p) :] if t < 256]) for s, p in zip(seqs, prompts)]


TEXTS = ["Reverse the word: planet", "What is 37 plus 5?", "Convert to uppercase: the quick fox", "Swap the two words: red car"]


def test_row_scales_bound_the_quantization_error():
    x = torch.randn(5, 64) * torch.logspace(-3, 3, 5)[:, None]  # rows of very different magnitude
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (5, 1)
    back = q.to(torch.float32) * scale
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of each row's magnitude
    assert ((back - x).abs() <= x.abs().amax(-1, keepdim=True) * 2**-4).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_emulation_and_is_close_to_the_full_product(dtype):
    torch.manual_seed(0)
    x, w = torch.randn(3, 7, 128, dtype=dtype), torch.randn(96, 128, dtype=dtype) / 10
    weight = Fp8Weight.quantize(w)
    kernel, emulated = fp8_linear(x, weight), fp8_linear(x, weight, emulate=True)
    assert kernel.shape == (3, 7, 96) and kernel.dtype == dtype
    torch.testing.assert_close(kernel, emulated, rtol=2e-2, atol=2e-2)
    exact = (x.float() @ w.float().T).to(dtype)
    assert (kernel.float() - exact.float()).norm() / exact.float().norm() < 0.06


def test_fp8_keeps_the_embedded_models_answers_and_its_fused_projections():
    model = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")
    before = _answers(model, TEXTS)
    block = model.model.transformer.blocks[0]
    assert block.qkv_weight is not None
    quantize_weights(model, "fp8")
    assert isinstance(block.qkv_weight, Fp8Weight) and isinstance(block.q_proj, Fp8Linear)
    assert not block.qkv_weight.emulate  # torch._scaled_mm runs on the CPU
    # q/k/v are row slices of the fused FP8 weight (no second copy)
    assert block.q_proj.weight.values.untyped_storage().data_ptr() == block.qkv_weight.values.untyped_storage().data_ptr()
    assert isinstance(model.model.transformer.ff_out, Fp8Linear)  # the LM head too
    assert not any(p.dim() == 2 and p.shape[0] != model.info.vocab_size for p in model.parameters())  # only the embedding
    assert _answers(model, TEXTS) == before == ["tenalp", "42", "THE QUICK FOX", "car red"]


def test_emulation_gives_the_same_answers():
    model = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")
    assert quantize_fp8(model, emulate=True) > 0
    assert model.model.transformer.blocks[0].q_proj.weight.emulate
    assert _answers(model, TEXTS) == ["tenalp", "42", "THE QUICK FOX", "car red"]
