"""One KV cache per runner, one row per running sequence, grown on demand (shared by the
engines whose runners cache K/V: fastdllm, dinfer).

Rows are handed out lowest-free-first when a sequence is admitted and given back when it is
released. The tensors are allocated at the first cached forward and grow (rows geometrically up
to the runner's batch size, positions in steps of `ROUND`) while keeping their contents, since
rows in the middle of a block still need the K/V written at their block start.

When the last sequence leaves, the tensors stay: the next request reuses them, and with them
the CUDA graphs captured over them (graphs are bound to the cache's addresses, and recapturing
them costs tens of milliseconds per shape, every request, for a client that sends one request
at a time). `drop_idle()` frees them while no sequence runs; the scheduler calls it on idle
runners when another runner's step runs out of device memory.

Each sequence tells `take` how many positions it will use (its canvas), and `reserve` always
covers every row in use, so a cache sized at a sequence's first forward holds it to the end:
the cache, and the graphs over it, do not change while it runs. Trade-off: a kept cache keeps
the largest capacity it grew to, and cached forwards attend over all of it (the key mask hides
the unused slots); a sequence that finds the pool idle and needs less than 1/OVERSIZE of it
gets a new one instead.
"""

from __future__ import annotations

from dserve.modeling import DiffusionModel, KVCache

ROUND = 64  # capacity granularity (positions)
OVERSIZE = 2  # an idle pool's kept cache more than this many times a new sequence's need is dropped


class CachePool:
    def __init__(self, model: DiffusionModel, max_rows: int):
        self.model = model
        self.max_rows = max_rows
        self.cache: KVCache | None = None
        self._positions: dict[int, int] = {}  # row in use -> the cache slots its sequence will use

    @property
    def used(self) -> set[int]:
        """The rows in use."""
        return set(self._positions)

    def take(self, positions: int | None = None) -> int:
        """A free row for a new sequence that will use `positions` cache slots (None: unknown)."""
        if positions is not None and self.cache is not None and self.cache.capacity > OVERSIZE * _rounded(positions):
            self.drop_idle()  # only while idle: far larger than needed, not worth attending over
        row = next(i for i in range(len(self._positions) + 1) if i not in self._positions)
        self._positions[row] = positions or 0
        return row

    def give(self, row: int) -> None:
        self._positions.pop(row, None)

    def drop_idle(self) -> bool:
        """Free the tensors if no row is in use; True if there were any."""
        if self._positions or self.cache is None:
            return False
        self.cache = None
        return True

    def reserve(self, capacity: int) -> KVCache:
        """The cache, grown if needed to hold every used row, `capacity` positions and every
        used row's `take(positions)`."""
        rows = max(self._positions) + 1
        capacity = max(capacity, *self._positions.values())
        old = self.cache
        if old is not None and old.num_rows >= rows and old.capacity >= capacity:
            return old
        old_rows, old_cap = (old.num_rows, old.capacity) if old is not None else (0, 0)
        # rows past the highest one in use hold nothing to keep (say, a cache kept from earlier
        # requests): size the new cache by the rows in use, doubling, not by the old cache
        live = min(old_rows, rows)
        new_rows = max(rows, min(2 * live, self.max_rows))
        new_cap = _rounded(max(capacity, old_cap))
        new = self.model.new_kv_cache(new_rows, new_cap)
        if old is not None:
            for src, dst in zip(old.layers, new.layers):
                dst.k[:live, :, :old_cap] = src.k[:live]
                dst.v[:live, :, :old_cap] = src.v[:live]
        self.cache = new
        return new


def _rounded(capacity: int) -> int:
    return -(-capacity // ROUND) * ROUND
