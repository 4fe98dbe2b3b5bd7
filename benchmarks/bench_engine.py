"""Engine benchmark: every registered algorithm on a published model shape with random weights.

    python benchmarks/bench_engine.py --batch 1 8 32 --tokens-per-step 1 4 --json out.json \
        [--published-dir DIR]

Builds a published shape (default LLaDA-8B: 32 layers, d_model 4096; `--shape` names any directory
of benchmarks/shapes, e.g. nemotron-labs-diffusion-8b) with random bf16 weights on the GPU through
the family's loader, and times each algorithm that can run on it at each batch size with a fixed schedule of k tokens per step (steps = gen / k),
prompt 128, generation 256, block 32, every canvas decoded to the end (no early exit).
Reports tokens/s (batch x gen / wall time), ms per step and peak memory, as a table and JSON.
Each cell runs once to warm up (allocations, kernels, graphs), then once timed; the published
LLaDA/Fast-dLLM loops warm up on one block (they capture and compile nothing).

`--published-dir DIR` holds published code brought to the machine, never committed:
`DIR/llada/generate.py` (ML-GSAI/LLaDA), `DIR/fastdllm/{generate.py,model/}` (NVlabs/Fast-dLLM
llada) and, for the `dinfer/...` loops, `DIR/dinfer_src/python/dinfer/` (inclusionAI/dInfer's
python/dinfer). Their loops run in the same process on the published model class holding the
same weights, as the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"


def shape_dir(shape: str) -> Path:
    """A shape name under benchmarks/shapes, or a directory holding a config.json."""
    path = SHAPES_DIR / shape if (SHAPES_DIR / shape / "config.json").exists() else Path(shape)
    if not (path / "config.json").exists():
        known = sorted(p.name for p in SHAPES_DIR.iterdir() if (p / "config.json").exists())
        raise SystemExit(f"no config.json for shape {shape!r}; known shapes: {known}")
    return path


def build_model(shape: str, device: str):
    """Random bf16 weights in the shape, through the model family's own loader (as
    `dserve --load-format dummy` does). Returns (model, config dict)."""
    from dserve.loader import load_model
    from dserve.plugins import get_registry

    path = shape_dir(shape)
    model, _ = load_model(path, get_registry(), dtype="bfloat16", device=device, load_format="dummy")
    config = json.loads((path / "config.json").read_text())
    return model, config


@dataclass
class Cell:
    algorithm: str
    batch: int
    tokens_per_step: int
    tokens_per_s: float | None = None
    ms_per_step: float | None = None
    steps: int | None = None
    peak_memory_gib: float | None = None
    floor_ms_per_step: float | None = None  # GEMMs alone of the same forwards (benchmarks/roofline.py)
    floor_precision: str | None = None
    warmup_s: float | None = None  # the warm-up run (with --compile: compilation included)
    timed_s: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ms_per_step / self.floor_ms_per_step if self.ms_per_step and self.floor_ms_per_step else None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(
    cell: Cell,
    run: Callable[[], int],
    gen: int,
    warm_up: Callable[[], int] | None = None,
    floor=None,
    precision: str = "bf16",
) -> Cell:
    """Warm up once (`warm_up`, by default `run` itself), then time one run; `run` returns the
    number of steps it took. `floor` (a roofline.StepFloor): record the timed run's forwards and
    price their GEMMs in `precision` (after the timing)."""
    import contextlib

    try:
        t0 = time.perf_counter()
        (warm_up or run)()
        _sync()
        cell.warmup_s = time.perf_counter() - t0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with floor.recording() if floor is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            steps = run()
            _sync()
            seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        cell.note = "out of memory"
        return cell
    except Exception as exc:  # noqa: BLE001 - a failing baseline is a result to report
        cell.note = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
        return cell
    cell.tokens_per_s = cell.batch * gen / seconds
    cell.steps = steps
    cell.timed_s = seconds
    cell.ms_per_step = 1000 * seconds / max(steps, 1)
    if torch.cuda.is_available():
        cell.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
    if floor is not None and floor.forwards:
        try:
            cell.floor_ms_per_step = floor.per_step(steps, precision)
            cell.floor_precision = precision
        except Exception as exc:  # noqa: BLE001 - the cell's own timing stands without its floor
            cell.note = f"floor failed: {type(exc).__name__}: {str(exc)[:120]}"
    return cell


def ours(model, engine, alg, prompts, gen, block, k, extra: dict | None = None) -> Callable[[], int]:
    from dserve.loader import model_for_runner
    from dserve.params import resolve_params
    from dserve.sequence import Sequence

    values = {"steps": gen // k, "block_length": block, "temperature": 0.0}
    if REFRESH_EVERY != 1 and "refresh_every" in alg.load_params().model_fields:
        values["refresh_every"] = REFRESH_EVERY  # fastdllm's loops; the others have no such option
    values.update(extra or {})
    params = resolve_params(alg.load_params(), values)
    runner_cls = alg.load_runner()
    model = model_for_runner(model, runner_cls, enforce_eager=EAGER)

    # one runner for the warm-up and the timed run, as a server keeps one per algorithm: its KV
    # cache, and the CUDA graphs captured over it, carry over to the next requests
    runner = runner_cls(model, max_batch_size=len(prompts))

    def run() -> int:
        for p in prompts:
            runner.admit(Sequence(p, gen, params, ignore_eos=True))  # every canvas decodes to the end
        steps = 0
        while runner.sequences:
            steps += 1
            for r in runner.step():
                if r.finished:
                    runner.release(r.seq)
        return steps

    return run


def random_prompts(model, batch: int, length: int) -> list[list[int]]:
    """Ordinary token ids (not mask, EOS or end of turn), seeded by the batch size."""
    info = model.info
    special = {info.mask_id, *info.stop_ids}
    low, high = (1000, min(info.vocab_size, 30000)) if info.vocab_size > 2000 else (0, min(special))
    ids = torch.randint(low, high, (batch, length), generator=torch.Generator().manual_seed(batch))
    assert not any(i in special for i in ids.flatten().tolist())
    return ids.tolist()


class PublishedLoops:
    """The published LLaDA and Fast-dLLM loops on the published model class (same weights)."""

    def __init__(self, root: Path, our_model, shape: dict):
        self.root, self.our_model, self.shape, self.dinfer = root, our_model, shape, None
        sys.path.insert(0, str(root))
        self.llada = importlib.import_module("llada.generate")
        self.fastdllm = importlib.import_module("fastdllm.generate")
        modeling = importlib.import_module("fastdllm.model.modeling_llada")
        config_mod = importlib.import_module("fastdllm.model.configuration_llada")
        with torch.device("meta"):
            model = modeling.LLaDAModelLM(config_mod.LLaDAConfig(**_published_llada_config(shape)))
        model.config.use_cache = False
        # the same tensors as ours: no second copy of the weights
        model.load_state_dict(our_model.state_dict(), strict=False, assign=True)
        self.model = model.eval().to(our_model.device)
        self.mask_id = shape["mask_token_id"]
        self.forwards = 0
        original = self.model.forward

        def counted(*a, **kw):
            self.forwards += 1
            out = original(*a, **kw)
            # Random weights sometimes rank the mask token first; the published loops then
            # "commit" a mask, the block never finishes and they index past their schedule
            # (seen at batch 32, one token per step). dserve never predicts the mask token (see
            # dserve_fastdllm.rules); doing the same here is one column write per forward.
            out.logits[..., self.mask_id] = float("-inf")
            return out

        self.model.forward = counted

    def loop(self, name: str, prompts, gen, block, k) -> Callable[[], int]:
        if name.startswith("dinfer/"):
            if self.dinfer is None:
                self.dinfer = PublishedDInfer(self.root / "dinfer_src" / "python", self.our_model, self.shape)
            return self.dinfer.loop(name, prompts, gen, block)
        x = torch.tensor(prompts, device=self.model.device)
        fn = {
            "llada/generate": self.llada.generate,
            "fastdllm/generate": self.fastdllm.generate,
            "fastdllm/prefix_cache": self.fastdllm.generate_with_prefix_cache,
            "fastdllm/dual_cache": self.fastdllm.generate_with_dual_cache,
        }[name]

        def run() -> int:
            self.forwards = 0
            with torch.inference_mode():
                fn(
                    self.model,
                    x,
                    steps=gen // k,
                    gen_length=gen,
                    block_length=block,
                    temperature=0.0,
                    remasking="low_confidence",
                    mask_id=self.mask_id,
                )
            return self.forwards

        return run


def _published_llada_config(shape: dict) -> dict:
    """The published LLaDA config keys for a shape (LLaDA-8B's fixed choices filled in)."""
    return dict(
        shape,
        architectures=["LLaDAModelLM"],
        activation_type="silu",
        block_type="llama",
        rope=True,
        rope_full_precision=True,
        layer_norm_type="rms",
        rms_norm_eps=1e-5,
        weight_tying=False,
        include_bias=False,
        include_qkv_bias=False,
        attention_dropout=0.0,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        init_device="meta",
        pad_token_id=shape["eos_token_id"],
    )


class PublishedDInfer:
    """inclusionAI/dInfer's decoders and iteration managers on dInfer's own LLaDA class holding the
    same weights, configured as its benchmarks/benchmark.py does (threshold decoder,
    `BlockIteratorFactory(start_block_align=True)`, dual KV cache), without early stop so that
    every canvas decodes to the end like ours (`ignore_eos`).

    The code is imported without running `dinfer/__init__.py` and `dinfer/model/__init__.py`
    (they pull in the vLLM/SGLang serving stack and the MoE models); `vllm.distributed` is a
    stub for one process (tensor-parallel rank 0 of 1), which is all the dense LLaDA class asks."""

    LOOPS = {  # name -> (manager class, extra manager arguments); the defaults our dinfer engine mirrors
        "dinfer/blockwise_dual": ("BlockWiseDiffusionLLM", {}),
        "dinfer/vicinity_dual": ("VicinityCacheDiffusionLLM", {"prefix_look": 16, "after_look": 16, "warmup_steps": 4}),
    }

    def __init__(self, python_dir: Path, our_model, shape: dict):
        import types

        if "vllm.distributed" not in sys.modules:
            vllm, distributed = types.ModuleType("vllm"), types.ModuleType("vllm.distributed")
            distributed.get_tensor_model_parallel_rank = lambda: 0
            distributed.get_tensor_model_parallel_world_size = lambda: 1
            vllm.distributed = distributed
            sys.modules.update({"vllm": vllm, "vllm.distributed": distributed})
        for package in ("dinfer", "dinfer.model"):  # packages whose __init__ must not run
            module = types.ModuleType(package)
            module.__path__ = [str(python_dir.joinpath(*package.split(".")))]
            sys.modules.setdefault(package, module)
        self.decoding = importlib.import_module("dinfer.decoding")
        modeling = importlib.import_module("dinfer.model.modeling_llada")
        config = importlib.import_module("dinfer.model.configuration_llada").LLaDAConfig(**_published_llada_config(shape))
        model_config = modeling.create_model_config_from_pretrained_config(config)
        model_config.init_device = "meta"  # LLaDAModelLM alone would allocate on "cuda" (hard-coded)
        with torch.device("meta"):
            inner = modeling.LLaDAModel(model_config)
        model = modeling.LLaDAModelLM(config, model=inner)
        model.config.use_cache = False
        model.load_state_dict(our_model.state_dict(), strict=False, assign=True)  # our tensors, no copy
        self.model = model.eval().to(our_model.device)
        self.mask_id, self.eos_id = shape["mask_token_id"], shape["eos_token_id"]

    def loop(self, name: str, prompts, gen, block) -> Callable[[], int]:
        d = self.decoding
        manager, extra = self.LOOPS[name]
        decoder = d.ThresholdParallelDecoder(temperature=0, threshold=0.9, mask_id=self.mask_id, eos_id=self.eos_id)
        dllm = getattr(d, manager)(
            self.model,
            decoder,
            d.BlockIteratorFactory(start_block_align=True),
            cache_factory=d.KVCacheFactory("dual"),
            early_stop=False,
            **extra,
        )
        x = torch.tensor(prompts, device=self.model.device)

        def run() -> int:
            before = dllm.num_forwards
            with torch.inference_mode():
                dllm.generate(x, gen_length=gen, block_length=block)
            return dllm.num_forwards - before

        return run


EAGER = False
REFRESH_EVERY = 1
PUBLISHED = ["llada/generate", "fastdllm/generate", "fastdllm/prefix_cache", "fastdllm/dual_cache"]


def format_table(cells: list[Cell]) -> str:
    rows = [("algorithm", "batch", "tok/step", "tok/s", "ms/step", "floor ms", "ratio", "steps", "peak GiB", "warm-up s", "note")]
    for c in cells:
        f = lambda v, fmt: format(v, fmt) if v is not None else "-"  # noqa: E731
        rows.append(
            (
                c.algorithm,
                str(c.batch),
                str(c.tokens_per_step),
                f(c.tokens_per_s, ".1f"),
                f(c.ms_per_step, ".2f"),
                f(c.floor_ms_per_step, ".2f") + (f" {c.floor_precision}" if c.floor_precision else ""),
                f(c.ratio, ".2f"),
                f(c.steps, "d"),
                f(c.peak_memory_gib, ".1f"),
                f(c.warmup_s, ".1f"),
                c.note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shape",
        default="llada-8b",
        help="a directory under benchmarks/shapes (llada-8b, "
        "nemotron-labs-diffusion-8b, dream-7b, llada-small) or any directory with a config.json",
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[1, 4])
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=256)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--algorithms", nargs="*", help="engine/algorithm names to time (default: all registered)")
    p.add_argument("--published-dir", type=Path, help="published code to time as the baseline (never committed)")
    p.add_argument(
        "--published",
        nargs="*",
        default=PUBLISHED,
        help=f"which published loops to time: {', '.join(PUBLISHED)}, and (not by default) {', '.join(PublishedDInfer.LOOPS)}",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", type=Path)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument(
        "--quantization",
        choices=["8bit", "4bit", "fp8"],
        help="8bit/4bit: weight-only quantized linear layers (torchao); fp8: e4m3 weights and activations",
    )
    p.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the GEMM floor (benchmarks/roofline.py) of each cell's forwards (measured by default, "
        "in this process, after each cell; bf16, or fp8 with --quantization fp8)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's forward (as `dserve --compile`); compilation falls in each cell's "
        "warm-up run, reported apart (warm-up s) from the timed run",
    )
    p.add_argument(
        "--cell",
        nargs=3,
        action="append",
        metavar=("ALGORITHM", "BATCH", "TOKENS_PER_STEP"),
        help="time this cell instead of the --batch x --tokens-per-step x --algorithms grid (repeatable); "
        "ALGORITHM may carry request parameters: fastdllm/dual_cache+refresh_every=8",
    )
    p.add_argument(
        "--fp8-too",
        action="store_true",
        help="after the cells in bf16, quantize the model to fp8 in place and time the same cells again (same process)",
    )
    p.add_argument(
        "--refresh-every",
        type=int,
        default=1,
        help="fastdllm prefix/dual cache: a full-canvas refresh every N blocks (1 = the published schedule)",
    )
    args = p.parse_args(argv)
    global EAGER
    EAGER = args.enforce_eager

    from dserve.plugins import get_registry

    model, shape = build_model(args.shape, args.device)
    if args.quantization:
        from dserve.modeling.quantization import quantize_weights

        quantize_weights(model, args.quantization)
    if args.compile:
        # as dserve.loader.apply_speed_settings does for `dserve --compile`
        model.forward = torch.compile(model.forward, dynamic=True)
    global REFRESH_EVERY
    REFRESH_EVERY = args.refresh_every
    floor = None
    if not args.no_floor:
        from roofline import StepFloor, dims_from_config

        floor = StepFloor(dims_from_config(shape), args.device)
    registry = get_registry()
    caps = model.info.capabilities
    algorithms = [
        (e, a)
        for e in registry.engines.values()
        for a in e.algorithms
        if a.requires <= caps and (not args.algorithms or f"{e.name}/{a.name}" in args.algorithms)
    ]
    published = PublishedLoops(args.published_dir, model, shape) if args.published_dir else None

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"# {args.shape} bf16 random weights{' (' + args.quantization + ' linear layers)' if args.quantization else ''}"
        f"{' compiled' if args.compile else ''}{f' refresh_every {args.refresh_every}' if args.refresh_every != 1 else ''}"
        f" on {device_name}; prompt {args.prompt}, gen {args.gen}, block {args.block}",
        flush=True,
    )
    cells: list[Cell] = []

    def save() -> None:  # after every cell: a run cut off keeps what it measured
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
                        "cells": [asdict(c) | {"ratio": c.ratio} for c in cells],
                    },
                    indent=2,
                )
            )

    def record(cell: Cell) -> None:
        cells.append(cell)
        print(format_table([cell]).splitlines()[1], flush=True)
        save()

    precision = "fp8" if args.quantization == "fp8" else "bf16"
    if args.cell:
        jobs = []
        for name, batch, k in args.cell:
            base, *pairs = name.split("+")
            engine_name, alg_name = base.split("/")
            engine = registry.engine(engine_name)
            extra = {key: json.loads(value) for key, value in (pair.split("=", 1) for pair in pairs)}
            jobs.append((name, engine, engine.algorithm(alg_name), int(batch), int(k), extra))
        rounds = [precision] + (["fp8"] if args.fp8_too and precision != "fp8" else [])
        for round_precision in rounds:
            if round_precision != precision:
                from dserve import loader
                from dserve.modeling.quantization import quantize_weights

                loader._graphed.pop(id(model), None)  # graphs captured over the bf16 weights
                quantize_weights(model, "fp8")
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
            for name, engine, alg, batch, k, extra in jobs:
                label = name if round_precision == "bf16" else f"{name} [fp8]"
                prompts = random_prompts(model, batch, args.prompt)
                record(
                    measure(
                        Cell(label, batch, k),
                        ours(model, engine, alg, prompts, args.gen, args.block, k, extra),
                        args.gen,
                        floor=floor,
                        precision=round_precision,
                    )
                )
        algorithms = []  # the grid below is replaced by the cells
        batches: list[int] = []
    else:
        batches = args.batch
    for batch in batches:
        prompts = random_prompts(model, batch, args.prompt)
        for k in args.tokens_per_step:
            for engine, alg in algorithms:
                record(
                    measure(
                        Cell(f"{engine.name}/{alg.name}", batch, k),
                        ours(model, engine, alg, prompts, args.gen, args.block, k),
                        args.gen,
                        floor=floor,
                        precision=precision,
                    )
                )
            if published is not None:
                for name in args.published:
                    # the LLaDA/Fast-dLLM loops capture and compile nothing, so one block warms their
                    # kernels up (a full run would double a batch-32 cell's minutes); dInfer's code
                    # torch.compiles per shape, so it warms up on the full run like ours
                    warm_up = (
                        None
                        if name.startswith("dinfer/")
                        else published.loop(name, prompts, args.block, args.block, min(k, args.block))
                    )
                    record(
                        measure(
                            Cell(f"published {name}", batch, k),
                            published.loop(name, prompts, args.gen, args.block, k),
                            args.gen,
                            warm_up,
                        )
                    )
    print()
    print(format_table(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
