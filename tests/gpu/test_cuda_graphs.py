"""GPU-only paths (run on the device machine: `pytest -m gpu tests/gpu`)."""

import pytest
import torch
from unit.drive import run_to_completion

from dserve.modeling.cuda_graphs import GraphedModel
from dserve.modeling.tokenizer import chat_prompt_ids
from dserve.plugins import get_registry
from dserve.sequence import Sequence
from dserve_llada.config import LLaDAConfig
from dserve_llada.model import random_llada

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

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
    with torch.no_grad():  # spread the confidences so that several tokens commit per step
        m.model.transformer.ff_out.weight.mul_(40)
    return m


def test_graph_replay_equals_eager_forward(model):
    graphed = GraphedModel(model)
    ids = torch.randint(0, 4000, (3, 40), device="cuda")
    cache = model.new_kv_cache(3, 64)
    for _ in range(3):  # capture, then replay with new inputs
        ids = torch.randint(0, 4000, (3, 40), device="cuda")
        idx = torch.randint(0, 40, (3, 8), device="cuda")
        eager = model(ids, logits_index=idx)
        torch.testing.assert_close(graphed(ids, logits_index=idx), eager)
        pos = torch.arange(8, 16, device="cuda").expand(3, 8)
        eager_c = model(ids[:, 8:16], pos, kv_cache=cache.use_rows(slice(0, 3))).clone()
        torch.testing.assert_close(graphed(ids[:, 8:16], pos, kv_cache=cache.use_rows(slice(0, 3))), eager_c)


@pytest.mark.parametrize(
    "name",
    [
        "llada/reference",
        "fastdllm/basic",
        "fastdllm/prefix_cache",
        "fastdllm/dual_cache",
        "fastdllm/apd",
        "dinfer/dinfer_blockwise",
        "dinfer/dinfer_hierarchy",
        "dinfer/dinfer_credit",
    ],
)
def test_algorithms_give_the_same_tokens_with_graphs(model, name):
    engine, alg = name.split("/")
    spec = get_registry().engine(engine).algorithm(alg)
    extra = {"threshold": 0.7} if name.startswith("fastdllm/") and alg != "apd" else {}
    params = spec.load_params()(**({"steps": 16} if engine != "dinfer" else {}), block_length=16, **extra)
    prompts = [[1, 2, 3, 4, 5], list(range(10, 40)), [7] * 17]

    def run(m):
        seqs = [Sequence(p, 48, params) for p in prompts]
        out = run_to_completion(spec.load_runner()(m, max_batch_size=4), seqs)
        return [out[s.seq_id] for s in seqs]

    assert run(GraphedModel(model)) == run(model)


@pytest.mark.parametrize("name", ["nemotron/block_diffusion", "nemotron/ar", "nemotron/linear_spec"])
def test_nemotron_gives_the_same_tokens_with_graphs(name):
    """Nemotron's runners graph their block/token/draft forwards and run prefills eagerly; over
    the trained tiny checkpoint (real confidences: several tokens per step) and mixed prompt
    lengths joining a running batch, graphed and eager runs commit the same tokens."""
    from dserve_nemotron import TINY_MODEL_DIR
    from dserve_nemotron.model import load_nemotron

    model = load_nemotron(TINY_MODEL_DIR, dtype="bfloat16", device="cuda")
    engine, alg = name.split("/")
    spec = get_registry().engine(engine).algorithm(alg)
    params = spec.load_params()(**({"block_length": 8} if alg != "ar" else {}))
    questions = ["Reverse the word: planet", "Sort these numbers: 5 2 9 1 7", "What is 37 plus 5?", "Swap the two words: red car"]
    prompts = [chat_prompt_ids(model.tokenizer, [{"role": "user", "content": q}]) for q in questions]

    def run(m):
        runner = spec.load_runner()(m, max_batch_size=4)
        seqs = [Sequence(list(p), 32, params) for p in prompts]
        for s in seqs[1::2]:  # these run to the end of their canvas: many replays per graph
            s.ignore_eos = True
        out = {s.seq_id: {} for s in seqs}
        runner.admit(seqs[0])  # the others join while it runs: batches of changing size
        waiting = seqs[1:]
        for _ in range(1000):
            if not runner.sequences and not waiting:
                break
            if waiting:
                runner.admit(waiting.pop(0))
            for result in runner.step():
                out[result.seq.seq_id].update(dict(result.committed))
                if result.finished:
                    runner.release(result.seq)
        return [sorted(out[s.seq_id].items()) for s in seqs]

    graphed = GraphedModel(model)
    assert run(graphed) == run(model)
    assert graphed._graphs, "no forward was graphed"


def test_a_second_request_replays_the_first_ones_graphs(model):
    """A runner keeps its KV cache between requests, so the CUDA graphs captured for the first
    request (bound to that cache) serve the next one with the same shapes: no new capture."""
    spec = get_registry().engine("fastdllm").algorithm("dual_cache")
    params = spec.load_params()(steps=16, block_length=16)
    graphed = GraphedModel(model)
    runner = spec.load_runner()(graphed, max_batch_size=4)
    eager_runner = spec.load_runner()(model, max_batch_size=4)

    def one(r, prompt):
        seq = Sequence(prompt, 48, params)
        return run_to_completion(r, [seq])[seq.seq_id]

    first = one(runner, list(range(10, 40)))
    captured = set(graphed._graphs)
    assert captured, "nothing was graphed"
    second = one(runner, list(range(50, 80)))  # same length, other tokens
    assert set(graphed._graphs) == captured  # replayed, not recaptured
    assert (first, second) == (one(eager_runner, list(range(10, 40))), one(eager_runner, list(range(50, 80))))
