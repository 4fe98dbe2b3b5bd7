"""The core's batched forward (dserve.batch): every row gets what it would get forwarded alone,
whatever its batch-mates, padding and cache rows."""

import pytest
import torch

from dserve.batch import Row, RowBatch, forward
from dserve.modeling.cache_pool import CachePool
from dserve_llada.model import load_llada

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def model(tiny_random_dir):
    return load_llada(tiny_random_dir, dtype="float32")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 250, (n,), generator=torch.Generator().manual_seed(seed))


def test_ragged_rows_get_their_own_full_forward(model):
    canvases = [_ids(20, 0), _ids(13, 1), _ids(7, 2)]
    rows = [Row(c, logits=(2, 6)) for c in canvases] + [Row(canvases[0])]
    out = forward(model, RowBatch(rows))
    for c, got in zip(canvases, out):
        assert got.shape == (4, model.info.vocab_size)
        torch.testing.assert_close(got, model(c[None])[0, 2:6], **TOL)
    torch.testing.assert_close(out[3], model(canvases[0][None])[0], **TOL)


def test_blocks_over_cache_rows_equal_the_full_forward(model):
    """Full canvases write their cache rows; then blocks (ragged, rows out of order) forwarded
    over the cache with the whole canvas as keys reproduce the full forward's block logits."""
    canvases = [_ids(24, 3), _ids(17, 4), _ids(30, 5)]
    pool = CachePool(model, max_rows=4)
    rows = [pool.take(len(c)) for c in canvases]
    forward(model, RowBatch([Row(c, keys=len(c), cache_row=r) for c, r in zip(canvases, rows)]), pool)
    spans = [(8, 16), (4, 9), (20, 30)]
    blocks = [Row(c[a:b], start=a, keys=len(c), cache_row=r) for c, r, (a, b) in zip(canvases, rows, spans)]
    out = forward(model, RowBatch(blocks[::-1]), pool)[::-1]
    for c, (a, b), got in zip(canvases, spans, out):
        torch.testing.assert_close(got, model(c[None])[0, a:b], **TOL)


def test_causal_rows_over_the_cache_equal_a_causal_full_forward(model):
    """A causal prefill, then one token at a time over the cache (each its last logit), equals
    one causal forward of the whole text; a bidirectional row shares the batch unharmed."""
    text, other = _ids(12, 6), _ids(9, 7)
    causal_mask = torch.tril(torch.ones(12, 12, dtype=torch.bool))[None]
    want = model(text[None], attention_mask=causal_mask)[0]
    pool = CachePool(model, max_rows=2)
    row, row2 = pool.take(16), pool.take(16)
    got = forward(model, RowBatch([Row(text[:8], causal=True, cache_row=row, logits=(7, 8)), Row(other, cache_row=row2)]), pool)
    torch.testing.assert_close(got[0][0], want[7], **TOL)
    torch.testing.assert_close(got[1], model(other[None])[0], **TOL)
    for p in range(8, 12):
        (got,) = forward(model, RowBatch([Row(text[p : p + 1], start=p, causal=True, cache_row=row)]), pool)
        torch.testing.assert_close(got[0], want[p], **TOL)


def test_mixing_cached_and_uncached_rows_is_refused(model):
    pool = CachePool(model, max_rows=2)
    with pytest.raises(ValueError, match="all cached or none"):
        forward(model, RowBatch([Row(_ids(4, 8), cache_row=pool.take(4)), Row(_ids(4, 9))]), pool)


def test_rows_that_see_the_whole_cache_need_no_mask(model, monkeypatch):
    """Canvases that fill the cache's capacity (64 slots) and blocks over them see every slot: no
    mask is passed (so SDPA may use its flash kernel), and the logits equal the full forward."""
    canvases = [_ids(64, 6), _ids(64, 7)]
    pool = CachePool(model, max_rows=2)
    rows = [pool.take(len(c)) for c in canvases]
    masks = []
    call = model.forward

    def recording(*args, **kwargs):
        masks.append(kwargs.get("attention_mask"))
        return call(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording)
    forward(model, RowBatch([Row(c, keys=len(c), cache_row=r) for c, r in zip(canvases, rows)]), pool)
    out = forward(model, RowBatch([Row(c[8:16], start=8, keys=len(c), cache_row=r) for c, r in zip(canvases, rows)]), pool)
    assert pool.cache is not None and pool.cache.capacity == 64 and masks == [None, None]
    for c, got in zip(canvases, out):
        torch.testing.assert_close(got, call(c[None])[0, 8:16], **TOL)
    short = _ids(40, 8)  # sees 40 of the 64 slots: masked
    forward(model, RowBatch([Row(short[:8], start=0, keys=40, cache_row=rows[0])]), pool)
    assert masks[-1] is not None
