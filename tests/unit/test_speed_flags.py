"""The earlier servers' speed flags: APD (--enable-apd, --apd-max-parallel, --apd-threshold),
--compile and --no-flash-attention."""

import pytest
import torch

from dserve.loader import apply_speed_settings
from dserve.params import resolve_params
from dserve.plugins import get_registry
from dserve.sequence import Sequence
from dserve.service import GenerationService
from dserve.settings import Settings
from dserve_fastdllm.params import APDParams
from dserve_fastdllm.rules import leftmost_confident_run
from dserve_fastdllm.runner import APDRunner
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada
from unit.drive import run_to_completion


@pytest.fixture(scope="module")
def model():
    return load_llada(EMBEDDED_MODEL_DIR, dtype="float32")


def _rows(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_apd_rule_takes_the_leftmost_confident_run():
    inf = float("inf")
    conf = _rows([-inf, 0.9, 0.8, 0.2, 0.95, 0.9], [0.1, 0.9, 0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9, -inf, 0.9])
    masked = conf > -inf
    got = leftmost_confident_run(conf, masked, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([8, 8, 2]))
    assert got.tolist() == [
        [False, True, True, False, False, False],  # stops at the first unsure mask (0.2)
        [True, False, False, False, False, False],  # the first mask always, even when unsure
        [True, True, False, False, False, False],  # capped at apd_max_parallel
    ]


def test_apd_params_have_vdiff_defaults_and_refuse_other_rules():
    p = resolve_params(APDParams, {})
    assert (p.apd_max_parallel, p.apd_threshold) == (8, 0.3)
    with pytest.raises(Exception, match="threshold and factor do not apply"):
        resolve_params(APDParams, {"threshold": 0.9})


def test_apd_decodes_in_parallel_and_is_batch_invariant(model):
    tok = model.tokenizer
    prompts = []
    for text in ("Reverse the word: planet", "What is 37 plus 5?", "Repeat the word cat 3 times."):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        prompts.append(tok(chat, add_special_tokens=False)["input_ids"])
    params = resolve_params(APDParams, {"block_length": 32, "apd_max_parallel": 8, "apd_threshold": 0.3})

    def decode(batch):
        seqs = [Sequence(p, 64, params) for p in batch]
        out = run_to_completion(APDRunner(model, max_batch_size=4), seqs)
        return [(out[s.seq_id], s.nfe) for s in seqs]

    together = decode(prompts)
    assert together == [decode([p])[0] for p in prompts]
    # parallel: far fewer forwards than the 64 slots, and at most 8 tokens per step
    assert all(8 <= nfe < 64 for _, nfe in together)
    answers = [tok.decode([t for t in canvas[len(p) :] if t < 256]) for (canvas, _), p in zip(together, prompts)]
    assert answers[0].startswith("tenalp") and answers[1].startswith("42") and answers[2].startswith("cat cat cat")


def test_enable_apd_makes_apd_the_default_algorithm():
    service = GenerationService(Settings(enable_apd=True, apd_threshold=0.5), get_registry())
    service.load()
    try:
        choice = service.default_choice()
        assert (choice.engine.name, choice.algorithm.name) == ("fastdllm", "apd")
        assert service.choose("fastdllm", "dual_cache").algorithm.name == "dual_cache"  # a request still picks
    finally:
        service.shutdown()


@pytest.mark.slow
def test_compile_keeps_the_logits(model):
    compiled = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")
    apply_speed_settings(compiled, Settings(compile=True))
    for shape in ((2, 40), (3, 57)):
        ids = torch.randint(0, 250, shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(compiled(ids), model(ids), atol=1e-4, rtol=1e-4)
