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
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for t in texts]
    params = resolve_params(FastDLLMParams, {"threshold": 0.9, "block_length": 32})
    seqs = [Sequence(p, 32, params) for p in prompts]
    out = run_to_completion(DualCacheRunner(model, max_batch_size=8), seqs)
    return [tok.decode([t for t in out[s.seq_id][len(p):] if t < 256]) for s, p in zip(seqs, prompts)]


def test_int8_weights_keep_the_answers():
    model = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")
    texts = ["Reverse the word: planet", "What is 37 plus 5?", "Convert to uppercase: the quick fox", "Swap the two words: red car"]
    before = _answers(model, texts)
    quantize_weights(model, "8bit")
    block = model.model.transformer.blocks[0]
    assert block.qkv_weight is None and type(block.q_proj.weight).__name__ != "Parameter"  # quantized, unfused
    assert type(model.model.transformer.ff_out.weight).__name__ != "Parameter"  # the LM head too
    assert _answers(model, texts) == before == ["tenalp", "42", "THE QUICK FOX", "car red"]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        quantize_weights(torch.nn.Linear(2, 2), "2bit")
