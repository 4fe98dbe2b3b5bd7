"""Where a decoding step's time goes: GPU busy time versus wall time, and the top kernels.

    python benchmarks/profile_step.py --algorithm fastdllm/dual_cache --batch 1 --tokens-per-step 1

Runs one generation of the engine benchmark's cell (LLaDA-8B shape, random bf16 weights) to warm
up, then one under torch.profiler. Prints wall time per step, the summed kernel time per step
(what the GPU was busy with) and their difference (the GPU waiting on the host), then the
kernels and host operators that cost most. Also times the bare model forward of the step's two
shapes (block over the cache, full canvas) with CUDA events, graphed as the engine runs them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import build_model, ours, random_prompts  # noqa: E402


def _device_time(evt) -> float:
    return getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)


def forward_ms(model, batch: int, tokens: int, capacity: int, repeats: int = 20) -> float:
    """Mean ms of one graphed forward of `tokens` per row over a KV cache of `capacity` slots,
    logits at 32 positions per row (what a dual-cache block step or a refresh computes)."""
    from dserve.modeling.cuda_graphs import GraphedModel

    graphed = GraphedModel(model)
    cache = model.new_kv_cache(batch, capacity)
    cache.use_rows(slice(0, batch))
    ids = torch.randint(0, 1000, (batch, tokens), device=model.device)
    pos = torch.arange(tokens, device=model.device).expand(batch, tokens).contiguous()
    mask = torch.ones(batch, capacity, dtype=torch.bool, device=model.device)
    index = torch.arange(32, device=model.device).expand(batch, 32).contiguous()
    for _ in range(3):
        graphed(ids, pos, attention_mask=mask, kv_cache=cache, logits_index=index)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graphed(ids, pos, attention_mask=mask, kv_cache=cache, logits_index=index)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llada-8b", help="a directory under benchmarks/shapes or with a config.json")
    p.add_argument("--algorithm", nargs="+", default=["fastdllm/dual_cache"])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[1])
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from dserve.plugins import get_registry

    model, _ = build_model(args.shape, "cuda")
    registry = get_registry()
    canvas = args.prompt + args.gen
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "forward_ms": {}, "cells": []}
    for batch in args.batch:
        report["forward_ms"][f"B{batch} block {args.block} over {canvas}"] = forward_ms(model, batch, args.block, canvas)
        report["forward_ms"][f"B{batch} full canvas {canvas}"] = forward_ms(model, batch, canvas, canvas, repeats=5)
    for name, ms in report["forward_ms"].items():
        print(f"bare forward {name}: {ms:.2f} ms", flush=True)

    for batch in args.batch:
        prompts = random_prompts(model, batch, args.prompt)
        for k in args.tokens_per_step:
            for full in args.algorithm:
                engine_name, alg_name = full.split("/")
                engine = registry.engine(engine_name)
                run = ours(model, engine, engine.algorithm(alg_name), prompts, args.gen, args.block, k)
                run()
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    t0 = time.perf_counter()
                    steps = run()
                    torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                events = prof.key_averages()
                busy_us = sum(_device_time(e) for e in events if e.device_type.name == "CUDA")
                wall_ms, busy_ms = 1000 * wall / steps, busy_us / 1000 / steps
                cell = {
                    "algorithm": full,
                    "batch": batch,
                    "tokens_per_step": k,
                    "steps": steps,
                    "wall_ms_per_step": wall_ms,
                    "gpu_busy_ms_per_step": busy_ms,
                    "profiled_tok_s": batch * args.gen / wall,
                }
                report["cells"].append(cell)
                print(
                    f"\n== {full} B{batch} k{k}: {steps} steps, wall {wall_ms:.2f} ms/step (profiled), "
                    f"GPU busy {busy_ms:.2f} ms/step, GPU idle {wall_ms - busy_ms:.2f} ms/step",
                    flush=True,
                )
                print(events.table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=60))
                print(events.table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
