"""Attention takes a fused SDPA kernel for every mask it meets: with the unfused math kernel
disabled, a forward with no mask (flash), a key mask (padded rows, cached rows seeing part of the
cache) and a per-query mask (block-causal rows), with equal and grouped K/V heads, still runs,
and agrees with the math kernel."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dserve.batch import Row, RowBatch, forward
from dserve.modeling.cache_pool import CachePool
from dserve_llada.config import LLaDAConfig
from dserve_llada.model import random_llada

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def _model(kv_heads: int):
    cfg = dict(d_model=512, n_layers=2, n_heads=8, n_kv_heads=kv_heads, mlp_hidden_size=1024, vocab_size=4096)
    cfg.update(embedding_size=4096, max_sequence_length=1024, rope_theta=500000.0, mask_token_id=4095, eos_token_id=4094)
    return random_llada(LLaDAConfig.from_dict(cfg), dtype=torch.bfloat16, device="cuda", seed=0)


def _ids(n, seed):
    return torch.randint(0, 4000, (n,), generator=torch.Generator().manual_seed(seed)).cuda()


def _batches(model):
    canvases = [_ids(64, 0), _ids(64, 1)]
    pool = CachePool(model, 4)
    rows = [pool.take(64) for _ in canvases]
    yield "no mask", RowBatch([Row(c) for c in canvases]), None
    yield "padded rows", RowBatch([Row(canvases[0]), Row(canvases[1][:40])]), None
    yield "cache refresh", RowBatch([Row(c, keys=64, cache_row=r) for c, r in zip(canvases, rows)]), pool
    yield "block over the cache", RowBatch([Row(c[8:16], start=8, keys=64, cache_row=r) for c, r in zip(canvases, rows)]), pool
    yield "part of the cache", RowBatch([Row(c[8:16], start=8, keys=40, cache_row=r) for c, r in zip(canvases, rows)]), pool
    yield "causal", RowBatch([Row(canvases[0][:24], causal=True), Row(canvases[1][:16], causal=True)]), None


@pytest.mark.parametrize("kv_heads", [8, 2])
def test_every_mask_takes_a_fused_kernel(kv_heads):
    model = _model(kv_heads)
    with torch.inference_mode():
        for name, batch, pool in _batches(model):
            with sdpa_kernel([SDPBackend.MATH]):
                want = [t.float().clone() for t in forward(model, batch, pool)]
            with sdpa_kernel(FUSED):  # raises "No available kernel" if only math could run
                got = [t.float() for t in forward(model, batch, pool)]
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=0.15, rtol=0.05, msg=name)
