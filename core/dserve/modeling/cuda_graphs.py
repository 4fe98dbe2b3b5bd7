"""CUDA graphs for model forwards: capture once per input signature, then replay.

A denoising step calls the model with the same shapes again and again (a batch of blocks over a
cache, or a batch of full canvases), so the ~15 kernel launches per layer can be replayed as
one graph instead of being issued from Python each step. `GraphedModel` wraps a model and is a
drop-in replacement for engines: same call, same attributes.

The returned logits live in the graph's static output buffer: they are valid until the next
call with the same signature (engines consume them within the step).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from dserve.modeling.kv_cache import KVCache

log = structlog.get_logger("dserve.cuda_graphs")


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor | None
    output: torch.Tensor
    cache: weakref.ref | None  # the KV cache the graph writes into

    def stale(self) -> bool:
        return self.cache is not None and self.cache() is None


def _signature(t: torch.Tensor | None):
    return None if t is None else (tuple(t.shape), t.dtype)


class GraphedModel:
    def __init__(self, model: Any, max_graphs: int = 64):
        self.model = model
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle()
        self.broken = False  # a capture failed: every forward runs eagerly

    def _eager(self, args: dict, kv_cache: KVCache | None) -> torch.Tensor:
        return self.model(
            args["input_ids"],
            args["positions"],
            attention_mask=args["attention_mask"],
            kv_cache=kv_cache,
            logits_index=args["logits_index"],
        )

    def __getattr__(self, name: str) -> Any:  # info, tokenizer, device, new_kv_cache, ...
        return getattr(self.model, name)

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        layer_rows = kv_cache.layers[0].rows if kv_cache is not None else None
        static_slice = layer_rows if isinstance(layer_rows, slice) else None
        rows = layer_rows if isinstance(layer_rows, torch.Tensor) else None  # a slice is part of the key
        args = {"input_ids": input_ids, "positions": positions, "attention_mask": attention_mask, "logits_index": logits_index}
        key = (
            tuple((name, _signature(t)) for name, t in args.items()),
            id(kv_cache),
            _signature(rows),
            None if static_slice is None else (static_slice.start, static_slice.stop),
        )
        if self.broken:
            return self._eager(args, kv_cache)
        # a graph of a cache that is gone must never run again (its id may be reused)
        stale = [k for k, g in self._graphs.items() if g.stale()]
        for k in stale:
            del self._graphs[k]
        if stale and not self._graphs:
            # the memory pool's last graph is gone: PyTorch refuses to capture into a pool whose
            # graphs were all freed ("use_count > 0" assertion), so start a new one
            self._pool = torch.cuda.graph_pool_handle()
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(key, args, kv_cache, rows if static_slice is None else static_slice)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError:
                # a capture PyTorch cannot make must not take the server down: run eagerly from now on
                log.exception("CUDA graph capture failed; running forwards eagerly from now on")
                self.broken = True
                self._graphs.clear()
                return self._eager(args, kv_cache)
        else:
            self._graphs.move_to_end(key)
        for name, t in args.items():
            if t is not None:
                entry.inputs[name].copy_(t)
        if rows is not None:
            assert entry.rows is not None  # captured with row indices: the key says so
            entry.rows.copy_(rows)
        entry.graph.replay()
        return entry.output

    def _capture(self, key, args, kv_cache: KVCache | None, rows: torch.Tensor | slice | None) -> _Graph:
        static = {name: t.clone() for name, t in args.items() if t is not None}
        static_rows = rows.clone() if isinstance(rows, torch.Tensor) else rows

        def call():
            if kv_cache is not None:
                kv_cache.use_rows(static_rows)
            return self.model(
                static["input_ids"],
                static.get("positions"),
                attention_mask=static.get("attention_mask"),
                kv_cache=kv_cache,
                logits_index=static.get("logits_index"),
            )

        # warm up on a side stream (lazy initialisation must not happen during capture)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: HTTP-side CUDA queries (memory metrics) on other threads must not void the capture
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = call()
        if kv_cache is not None:
            kv_cache.use_rows(rows)
        entry = _Graph(
            graph,
            static,
            static_rows if isinstance(static_rows, torch.Tensor) else None,
            output,
            weakref.ref(kv_cache) if kv_cache is not None else None,
        )
        self._graphs[key] = entry
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry


def eager_model(model: Any) -> Any:
    """The model under a CUDA-graph wrapper (or the model itself): for the forwards a runner
    knows are one-off shapes, such as a prompt's prefill."""
    return model.model if isinstance(model, GraphedModel) else model
