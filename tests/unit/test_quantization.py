"""--quantization 8bit: weight-only int8 linear layers (torchao) keep the embedded model's answers."""

import pytest
import torch

from dserve.modeling.quantization import quantize_weights
from dserve.params import resolve_params
from dserve.sequence import Sequence
from dserve_fastdllm.params import FastDLLMParams
from dserve_fastdllm.runner import DualCacheRunner
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada
from unit.drive import run_to_completion

pytest.importorskip("torchao")


def _answers(model, texts):
    tok = model.tokenizer
    prompts = [
        tok(
            tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for t in texts
    ]
    params = resolve_params(FastDLLMParams, {"threshold": 0.9, "block_length": 32})
    seqs = [Sequence(p, 32, params) for p in prompts]
    out = run_to_completion(DualCacheRunner(model, max_batch_size=8), seqs)
    return [tok.decode([t for t in out[s.seq_id][len(p) :] if t < 256]) for s, p in zip(seqs, prompts)]


def test_int8_weights_keep_the_answers():
    model = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")
    texts = [
        "Reverse the word: planet",
        "What is 37 plus 5?",
        "Convert to uppercase: the quick fox",
        "Swap the two words: red car",
    ]
    before = _answers(model, texts)
    quantize_weights(model, "8bit")
    block = model.model.transformer.blocks[0]
    assert block.qkv_weight is None and type(block.q_proj.weight).__name__ != "Parameter"  # quantized, unfused
    assert type(model.model.transformer.ff_out.weight).__name__ != "Parameter"  # the LM head too
    assert _answers(model, texts) == before == ["tenalp", "42", "THE QUICK FOX", "car red"]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        quantize_weights(torch.nn.Linear(2, 2), "2bit")


def test_int4_emulation_writes_the_weights_the_int4_kernel_uses(tmp_path):
    """benchmarks/int4_emulated.py (4-bit quality where the int4 kernel cannot run): every linear
    weight, LM head included, holds at most 16 levels per group of 128 inputs, within half a
    level of the original; the rest of the checkpoint is untouched and the copy loads."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = Path(__file__).parents[2] / "benchmarks" / "int4_emulated.py"
    run = subprocess.run(
        [sys.executable, str(script), str(EMBEDDED_MODEL_DIR), str(tmp_path / "int4")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    before = load_file(str(EMBEDDED_MODEL_DIR / "model.safetensors"))
    after = load_file(str(tmp_path / "int4" / "model.safetensors"))
    assert before.keys() == after.keys()
    linear = [k for k in before if before[k].dim() == 2 and ".wte." not in k]
    assert len(linear) == 6 * 7 + 1  # q, k, v, attn_out, ff_proj, up_proj, ff_out per block; the LM head
    for k in before:
        if k not in linear:
            assert torch.equal(before[k], after[k]), k
            continue
        groups_before = before[k].reshape(-1, 128)
        groups_after = after[k].reshape(-1, 128)
        assert max(len(torch.unique(g)) for g in groups_after) <= 16, k
        step = (groups_before.amax(1) - groups_before.amin(1)) / 15
        assert ((groups_after - groups_before).abs() <= step[:, None] * 0.51 + 1e-2).all(), k
        assert not torch.equal(before[k], after[k]), k
    load_llada(tmp_path / "int4", dtype="float32")


def test_4bit_on_cuda_loads_in_bfloat16_unless_told_otherwise():
    from dserve.modeling.quantization import load_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert load_dtype("4bit", "auto", cuda) == "bfloat16"
    assert load_dtype("4bit", "float32", cuda) == "float32"  # explicit: quantize_weights refuses it
    assert load_dtype("4bit", "auto", cpu) == "auto"
    assert load_dtype("8bit", "auto", cuda) == "auto"
    assert load_dtype(None, "auto", cuda) == "auto"
