"""dserve.modeling.cache_pool: one KV cache per runner, one row per running sequence."""

import torch

from dserve.modeling.cache_pool import ROUND, CachePool
from dserve_llada import EMBEDDED_MODEL_DIR
from dserve_llada.model import load_llada

MODEL = load_llada(EMBEDDED_MODEL_DIR, dtype="float32")


def _fill(cache, row: int, value: float) -> None:
    for layer in cache.layers:
        layer.k[row] = value
        layer.v[row] = -value


def _row_is(cache, row: int, value: float, upto: int) -> bool:
    return all(
        bool((layer.k[row, :, :upto] == value).all() and (layer.v[row, :, :upto] == -value).all()) for layer in cache.layers
    )


def test_rows_grow_by_doubling_and_keep_their_contents():
    pool = CachePool(MODEL, max_rows=8)
    sizes = []
    for i in range(5):
        row = pool.take()
        cache = pool.reserve(40)
        _fill(cache, row, float(i + 1))
        sizes.append(cache.num_rows)
    assert sizes == [1, 2, 4, 4, 8] and cache.capacity == ROUND
    assert all(_row_is(cache, r, float(r + 1), ROUND) for r in range(5))


def test_a_kept_cache_is_reused_and_a_longer_canvas_does_not_copy_idle_rows():
    pool = CachePool(MODEL, max_rows=8)
    rows = [pool.take() for _ in range(8)]
    big = pool.reserve(40)
    for r in rows:
        pool.give(r)
    assert pool.cache is big  # idle: kept for the next request (and the CUDA graphs over it)
    row = pool.take()
    assert pool.reserve(40) is big
    _fill(big, row, 7.0)
    longer = pool.reserve(ROUND + 1)  # one sequence in use needs more positions
    assert longer.capacity == 2 * ROUND and longer.num_rows == 2  # the rows in use, doubled: not 8
    assert _row_is(longer, row, 7.0, ROUND)  # its contents came along
    pool.give(row)
    assert pool.drop_idle() and pool.cache is None and not pool.drop_idle()


def test_drop_idle_keeps_a_cache_in_use():
    pool = CachePool(MODEL, max_rows=4)
    pool.take()
    pool.reserve(10)
    assert not pool.drop_idle() and pool.cache is not None
    assert isinstance(pool.cache.layers[0].k, torch.Tensor)


def test_an_idle_pool_drops_a_kept_cache_far_larger_than_the_next_sequence_needs():
    pool = CachePool(MODEL, max_rows=4)
    row = pool.take(1000)
    kept = pool.reserve(1000)
    pool.give(row)
    assert pool.cache is kept and kept.capacity == 1024
    row = pool.take(600)  # within OVERSIZE (2x) of 1024: reused, graphs and all
    assert pool.cache is kept
    pool.give(row)
    row = pool.take(100)  # a tenth: attending over 1024 slots every step is not worth keeping it
    assert pool.cache is None
    assert pool.reserve(100).capacity == 128
    pool.take(5000)  # not idle: a running sequence's cache is never dropped
    assert pool.cache is not None
