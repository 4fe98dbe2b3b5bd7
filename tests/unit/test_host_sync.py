"""No host synchronisation inside a decoding step: every step of the runners below runs under
`no_host_sync()` (the CPU stand-in for CUDA's sync debug mode; the device test is
tests/gpu/test_host_sync.py) and reads back only through `dserve.batch.readback`, once."""

import pytest
import torch

from dserve.plugins import get_registry
from dserve.sequence import Sequence
from dserve_llada.model import load_llada
from unit.host_sync import HostSync, no_host_sync

CASES = {
    "llada/reference": {"steps": 8},
    "fastdllm/basic": {"threshold": 0.5},
    "fastdllm/prefix_cache": {"steps": 8},
    "fastdllm/dual_cache": {"threshold": 0.5},
    "fastdllm/dual_cache refresh_every": {"threshold": 0.5, "refresh_every": 2},
    "fastdllm/apd": {},
    "dinfer/dinfer_blockwise": {},  # vicinity dual cache (the published default)
    "dinfer/dinfer_blockwise prefix": {"cache": "prefix"},
    "dinfer/dinfer_hierarchy": {},
    "dinfer/dinfer_credit": {"cache": "none"},
}


@pytest.fixture(scope="module")
def model(tiny_random_dir):
    return load_llada(tiny_random_dir, dtype="float32")


@pytest.mark.parametrize("case", list(CASES))
def test_steps_make_no_host_sync(model, case):
    name = case.split()[0]
    engine, alg = name.split("/")
    spec = get_registry().engine(engine).algorithm(alg)
    params = spec.load_params()(block_length=8, **CASES[case])
    runner = spec.load_runner()(model, max_batch_size=4)
    seqs = [Sequence(p, 16, params) for p in ([5, 6, 7], list(range(10, 30)), [9] * 11)]
    for s in seqs[1:]:
        s.ignore_eos = True
    for s in seqs:
        runner.admit(s)
    steps = 0
    while runner.sequences and steps < 200:
        steps += 1
        with no_host_sync():
            results = runner.step()
        for r in results:
            if r.finished:
                runner.release(r.seq)
    assert not runner.sequences and steps >= 2


def test_the_stand_in_catches_what_a_gpu_waits_for():
    t = torch.arange(6)
    for sync in (lambda: t[2].item(), lambda: t.tolist(), lambda: bool(t[1]), lambda: t.nonzero(), lambda: t[t > 2]):
        with pytest.raises(HostSync), no_host_sync():
            sync()
    with no_host_sync():
        torch.where(t > 2, t, 0).sum()  # device-side arithmetic is fine
