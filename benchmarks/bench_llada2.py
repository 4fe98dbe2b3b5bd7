"""Engine benchmark for the LLaDA2 family: dserve's `llada2/llada2` next to the published
`LLaDA2MoeModelLM.generate` on the same random bf16 weights, at the LLaDA2.0-mini shape.

    python benchmarks/bench_llada2.py --batch 1 32 --tokens-per-step 1 4 --json out.json \
        [--published-dir .dev/pub]

The model is built through the family's loader with random weights (as `dserve --load-format
dummy`), and each cell runs once to warm up, then once timed, with the cells, table and JSON of
bench_engine.py. Fixed schedules: threshold 1.0 and `steps = block / k` per block, so every
block commits k tokens per step whatever the random weights predict; prompt 128, generation 256,
block 32, every canvas decoded to the end (no EOS stop).

`--published-dir DIR` holds the published modeling code brought to the machine, never committed:
`DIR/llada2/{modeling,configuration}_llada2_moe.py` (as published with the checkpoints; the
ZHZisZZ/dllm copy `dllm/pipelines/llada2/models/`). It is built on the meta device and given our
model's tensors (no second copy of the 16B weights), sdpa attention. Its `generate` decodes one
sequence at a time (batch 1 by construction) and forwards the whole canvas up to the current
block at every step (no cache): a batch of B runs its prompts one after the other, and at B
above `--published-sample` only that many are timed (the loop's throughput does not depend on
B; the cell's note says so). Its code written for transformers 4.x runs on 5.x through three
import-time shims (removed helper names, the removed "default" RoPE init, as 4.x computes it),
not edits to the file. Its bf16 block mask is given in the model dtype, as sdpa needs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import Cell, build_model, format_table, measure, random_prompts  # noqa: E402


def ours(model, prompts, gen: int, block: int, k: int) -> Callable[[], int]:
    from dserve.loader import model_for_runner
    from dserve.plugins import get_registry
    from dserve.sequence import Sequence

    alg = get_registry().engines["llada2"].algorithm("llada2")
    assert alg is not None
    params = alg.load_params()(temperature=0.0, steps=block // k, block_length=block, threshold=1.0)
    runner_cls = alg.load_runner()
    runner = runner_cls(model_for_runner(model, runner_cls, enforce_eager=False), max_batch_size=len(prompts))

    def run() -> int:
        for p in prompts:
            runner.admit(Sequence(p, gen, params, ignore_eos=True))
        steps = 0
        while runner.sequences:
            steps += 1
            for r in runner.step():
                if r.finished:
                    runner.release(r.seq)
        return steps

    return run


def _transformers_shims() -> None:
    """What the published file imports from transformers 4.x, on 5.x (no change to the file)."""
    import transformers.modeling_rope_utils as rope_utils
    import transformers.pytorch_utils as pytorch_utils
    import transformers.utils.import_utils as import_utils

    if not hasattr(import_utils, "is_torch_fx_available"):
        import_utils.is_torch_fx_available = lambda: False
    if not hasattr(pytorch_utils, "is_torch_greater_or_equal_than_1_13"):
        pytorch_utils.is_torch_greater_or_equal_than_1_13 = True
    if not hasattr(pytorch_utils, "ALL_LAYERNORM_LAYERS"):
        pytorch_utils.ALL_LAYERNORM_LAYERS = []

    def default_rope(config, device=None, seq_len=None):  # 4.x `_compute_default_rope_parameters`
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
        arange = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
        return 1.0 / (config.rope_theta ** (arange / dim)), 1.0

    rope_utils.ROPE_INIT_FUNCTIONS.setdefault("default", default_rope)


class PublishedLLaDA2:
    """The published model class holding our model's tensors, and its `generate`."""

    def __init__(self, root: Path, our_model, shape: dict):
        _transformers_shims()
        sys.path.insert(0, str(root))
        modeling = importlib.import_module("llada2.modeling_llada2_moe")
        config_mod = importlib.import_module("llada2.configuration_llada2_moe")
        cfg = config_mod.LLaDA2MoeConfig(**{k: v for k, v in shape.items() if k not in ("architectures", "model_type")})
        cfg._attn_implementation = "sdpa"
        with torch.device("meta"):
            model = modeling.LLaDA2MoeModelLM(cfg)
        missing, unexpected = model.load_state_dict(our_model.state_dict(), strict=False, assign=True)
        if unexpected or [m for m in missing if "rotary" not in m]:
            raise RuntimeError(f"published model and ours disagree on names: {missing[:4]} {unexpected[:4]}")
        model.model.rotary_emb = modeling.LLaDA2MoeRotaryEmbedding(cfg, device=our_model.device)
        self.model = model.eval().to(our_model.device)
        self.mask_id = shape["mask_token_id"]
        self.dtype = our_model.dtype
        self.forwards = 0
        original = self.model.forward

        def counted(*a, **kw):
            self.forwards += 1
            return original(*a, **kw)

        self.model.forward = counted

    def loop(self, prompts, gen: int, block: int, k: int) -> Callable[[], int]:
        def run() -> int:
            self.forwards = 0
            to = torch.Tensor.to
            # generate casts its 0/-inf mask to bfloat16; sdpa wants the model's dtype (same values)
            torch.Tensor.to = lambda t, *a, **kw: to(t, *[self.dtype if x is torch.bfloat16 else x for x in a], **kw)  # type: ignore[method-assign]
            try:
                with torch.inference_mode():
                    for p in prompts:
                        self.model.generate(
                            torch.tensor([p], device=self.model.device),
                            temperature=0.0,
                            block_length=block,
                            steps=block // k,
                            gen_length=gen,
                            threshold=1.0,
                            eos_id=-1,  # every canvas to the end, as ours with ignore_eos
                            mask_id=self.mask_id,
                        )
            finally:
                torch.Tensor.to = to  # type: ignore[method-assign]
            return self.forwards

        return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llada2-mini")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[1, 4])
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--published-dir", type=Path)
    p.add_argument("--published-sample", type=int, default=4, help="at larger batches, time this many of the prompts")
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    model, shape = build_model(args.shape, args.device)
    published = PublishedLLaDA2(args.published_dir, model, shape) if args.published_dir else None
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    grouped = {m.grouped for m in model.moe_layers()}
    print(
        f"# {args.shape} bf16 random weights on {device_name}; prompt {args.prompt}, gen {args.gen}, block "
        f"{args.block}; experts via {'grouped GEMM' if grouped == {True} else 'padded batched GEMM'}",
        flush=True,
    )
    cells = []
    for batch in args.batch:
        prompts = random_prompts(model, batch, args.prompt)
        for k in args.tokens_per_step:
            cell = measure(Cell("llada2/llada2", batch, k), ours(model, prompts, args.gen, args.block, k), args.gen)
            cells.append(cell)
            print(format_table([cell]).splitlines()[1], flush=True)
            if published is not None:
                sample = prompts[: args.published_sample]
                cell = Cell("published llada2/generate", batch, k)
                cell = measure(
                    cell,
                    published.loop(sample, args.gen, args.block, k),
                    args.gen,
                    published.loop(sample[:1], args.block, args.block, k),
                )
                if cell.tokens_per_s is not None and len(sample) < batch:
                    cell.tokens_per_s *= len(sample) / batch  # measure() divided batch x gen tokens
                    cell.note = f"one sequence at a time; {len(sample)} of {batch} timed"
                elif cell.tokens_per_s is not None:
                    cell.note = "one sequence at a time"
                cells.append(cell)
                print(format_table([cell]).splitlines()[1], flush=True)
    print()
    print(format_table(cells))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "device": device_name,
                    "torch": torch.__version__,
                    "prompt": args.prompt,
                    "gen": args.gen,
                    "block": args.block,
                    "cells": [asdict(c) for c in cells],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
