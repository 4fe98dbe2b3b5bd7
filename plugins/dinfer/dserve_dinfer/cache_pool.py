"""The runner's KV cache: one row per cached sequence, grown on demand, dropped when idle.

A row holds the K/V of one sequence's whole canvas (slot = canvas position). Rows are handed out
lowest-free-first at admission and given back at release. The tensors are allocated at the first
cached forward and regrown (rows geometrically up to the runner's batch size, positions in steps
of ROUND) keeping their contents, since a sequence between two refreshes still reads the K/V of
its last refresh. The last slot of the capacity is never part of a canvas: padded inputs of a
ragged forward write their K/V there, and no key mask admits it.
"""

from __future__ import annotations

from dserve.modeling import DiffusionModel, KVCache

ROUND = 64  # capacity granularity (positions)


class CachePool:
    def __init__(self, model: DiffusionModel, max_rows: int):
        self.model = model
        self.max_rows = max_rows
        self.cache: KVCache | None = None
        self.used: set[int] = set()

    def take(self) -> int:
        row = next(i for i in range(len(self.used) + 1) if i not in self.used)
        self.used.add(row)
        return row

    def give(self, row: int) -> None:
        self.used.discard(row)
        if not self.used:
            self.cache = None

    def reserve(self, longest_canvas: int) -> KVCache:
        """The cache, grown if needed to hold every used row, `longest_canvas` slots and the
        scratch slot (capacity - 1) that padded inputs write to."""
        rows = max(self.used) + 1
        need = longest_canvas + 1
        old = self.cache
        if old is not None and old.num_rows >= rows and old.capacity >= need:
            return old
        old_rows, old_cap = (old.num_rows, old.capacity) if old is not None else (0, 0)
        new_rows = max(rows, old_rows, min(2 * old_rows, self.max_rows))
        new_cap = -(-max(need, old_cap) // ROUND) * ROUND
        new = self.model.new_kv_cache(new_rows, new_cap)
        if old is not None:
            for src, dst in zip(old.layers, new.layers):
                dst.k[:old_rows, :, :old_cap] = src.k
                dst.v[:old_rows, :, :old_cap] = src.v
        self.cache = new
        return new
