"""No host synchronisation inside a decoding step, on the device: every step runs under
`torch.cuda.set_sync_debug_mode("error")`, which raises on any synchronising CUDA call (a
blocking copy, `.item()`, `.tolist()`, `nonzero`, a stream or device synchronize). The step's
one read-back (`dserve.batch.readback`: pinned copies and one event wait) is what remains."""

import pytest
import torch

from dserve.modeling.cuda_graphs import GraphedModel
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
CASES = {
    "llada/reference": {"steps": 16},
    "fastdllm/dual_cache": {"threshold": 0.7},
    "fastdllm/dual_cache refresh_every": {"threshold": 0.7, "refresh_every": 2},
    "fastdllm/prefix_cache": {"steps": 16},
    "fastdllm/apd": {},
    "dinfer/dinfer_blockwise": {},
    "dinfer/dinfer_hierarchy": {},
}


@pytest.fixture(scope="module")
def model():
    m = random_llada(LLaDAConfig.from_dict(SMALL), dtype=torch.bfloat16, device="cuda", seed=0)
    with torch.no_grad():  # spread the confidences so that several tokens commit per step
        m.model.transformer.ff_out.weight.mul_(40)
    return m


def _run(runner, prompts, params, checked: bool) -> list[list[int]]:
    seqs = [Sequence(list(p), 48, params) for p in prompts]
    for s in seqs:
        s.ignore_eos = True
        runner.admit(s)  # admission (a new sequence's uploads) is outside the step
    out = {}
    while runner.sequences:
        if checked:
            torch.cuda.set_sync_debug_mode("error")
        try:
            results = runner.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for r in results:
            if r.finished:
                out[r.seq.seq_id] = r.seq.engine_state.canvas.tolist()
                runner.release(r.seq)
    return [out[s.seq_id] for s in seqs]


@pytest.mark.parametrize("case", list(CASES))
def test_a_step_does_not_synchronise(model, case):
    engine, alg = case.split()[0].split("/")
    spec = get_registry().engine(engine).algorithm(alg)
    params = spec.load_params()(block_length=16, **CASES[case])
    prompts = [[1, 2, 3, 4, 5], list(range(10, 40)), [7] * 17]
    # eager: every step checked
    eager = _run(spec.load_runner()(model, max_batch_size=4), prompts, params, checked=True)
    # graphed: the first request captures (a capture synchronises), the same request again replays
    graphed = GraphedModel(model)
    runner = spec.load_runner()(graphed, max_batch_size=4)
    first = _run(runner, prompts, params, checked=False)
    again = _run(runner, prompts, params, checked=True)
    assert not graphed.broken and (spec.load_runner().graphable is False or graphed._graphs)
    assert eager == first == again
