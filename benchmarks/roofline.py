"""The floor of a decoding step: the time of its GEMMs alone, measured on the machine it runs on.

    python benchmarks/roofline.py [--shape llada-8b] [--tokens 32 1024 12288] [--json out.json]

A forward of M tokens of a transformer multiplies, per layer, the fused q/k/v projection, the
attention output projection, the fused gate/up projection and the down projection, and then
the LM head over the positions whose logits are wanted. Nothing a serving engine does can make a
step cheaper than those products (attention, norms, RoPE, sampling and the host all come on
top), so their time is the floor a step is compared with. Measured here:

- bf16: `torch.mm` against bf16 weights;
- fp8: `torch._scaled_mm` on e4m3 operands with row-wise scales (per token, per output channel),
  the activations already quantized (the quantization kernels are not part of the floor);

each as one CUDA graph of all the layers' products plus the head (replayed, timed with events,
median of several replays). Weights are random in the model's shape, two layers' worth reused
in turn, so that every product streams its weights from memory as in the model (a layer's
weights are far larger than the L2 cache). On the CPU (tests) the same products run eagerly and
are timed with a wall clock.

`bench_engine.py` calls `StepFloor` in its own process: it records the forwards each cell
makes (tokens in, logits out) and prints each cell's ms/step beside the floor of exactly those
forwards, per step, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Dims:
    """The GEMM shapes of a decoder-only transformer."""

    layers: int
    d_model: int
    q_out: int  # query heads x head dim
    kv_out: int  # key/value heads x head dim (each)
    ff: int  # MLP hidden size
    vocab: int

    def per_layer(self) -> list[tuple[int, int]]:
        """(out, in) of each product of one layer: q/k/v fused, attention out, gate/up fused, down."""
        return [
            (self.q_out + 2 * self.kv_out, self.d_model),
            (self.d_model, self.q_out),
            (2 * self.ff, self.d_model),
            (self.d_model, self.ff),
        ]

    def flops(self, tokens: int, logits: int) -> float:
        return 2.0 * (tokens * self.layers * sum(o * i for o, i in self.per_layer()) + logits * self.vocab * self.d_model)


_ALIASES = {
    "layers": ("n_layers", "num_hidden_layers"),
    "d_model": ("d_model", "hidden_size"),
    "heads": ("n_heads", "num_attention_heads"),
    "kv_heads": ("n_kv_heads", "num_key_value_heads"),
    "ff": ("mlp_hidden_size", "intermediate_size"),
    "vocab": ("embedding_size", "vocab_size"),
    "head_dim": ("head_dim",),
}


def dims_from_config(config: dict) -> Dims:
    """Dims from a config.json (LLaDA, Dream/Qwen2, Nemotron/Llama key names)."""

    def get(key, default=None):
        for name in _ALIASES[key]:
            if config.get(name) is not None:
                return int(config[name])
        if default is None:
            raise KeyError(f"config has none of {_ALIASES[key]}")
        return default

    d, heads = get("d_model"), get("heads")
    head_dim = get("head_dim", d // heads)
    return Dims(get("layers"), d, heads * head_dim, get("kv_heads", heads) * head_dim, get("ff"), get("vocab"))


def _time_ms(fn, device: torch.device, reps: int) -> float:
    """Median ms of `reps` calls of fn (after one)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


class Roofline:
    """The GEMM time of a forward of `tokens` tokens with `logits` logit rows, in bf16 or fp8."""

    COPIES = 2  # distinct layer weights, used in turn (see the module docstring)

    def __init__(self, dims: Dims, device: str | torch.device = "cuda", precision: str = "bf16", seed: int = 0):
        if precision not in ("bf16", "fp8"):
            raise ValueError(f"precision must be bf16 or fp8, not {precision!r}")
        self.dims, self.device, self.precision = dims, torch.device(device), precision
        g = torch.Generator(device=self.device).manual_seed(seed)
        self._layers = [[self._weight(o, i, g) for o, i in dims.per_layer()] for _ in range(self.COPIES)]
        self._head = self._weight(dims.vocab, dims.d_model, g)
        self._cache: dict[tuple[int, int], float] = {}

    def _weight(self, out: int, inp: int, g: torch.Generator):
        w = torch.randn(out, inp, generator=g, device=self.device, dtype=torch.bfloat16) / inp**0.5
        if self.precision == "bf16":
            return w.T  # [in, out], the layout F.linear multiplies by
        from dserve.modeling.fp8 import Fp8Weight

        return Fp8Weight.quantize(w)

    def _activation(self, rows: int, width: int):
        x = torch.randn(rows, width, device=self.device, dtype=torch.bfloat16)
        if self.precision == "bf16":
            return x
        from dserve.modeling.fp8 import quantize_rows

        return quantize_rows(x)

    def _program(self, tokens: int, logits: int):
        """A callable running every product of the forward once (outputs discarded)."""
        d = self.dims
        inputs = {width: self._activation(tokens, width) for width in {i for _, i in d.per_layer()}}
        head_in = self._activation(max(logits, 1), d.d_model)

        if self.precision == "bf16":

            def mm(x, w):
                return torch.mm(x, w)

        else:

            def mm(x, w):
                xq, xs = x
                return torch._scaled_mm(xq, w.values.T, scale_a=xs, scale_b=w.scales.T, out_dtype=torch.bfloat16)

        def run():
            for layer in range(d.layers):
                for (_, width), w in zip(d.per_layer(), self._layers[layer % self.COPIES]):
                    mm(inputs[width], w)
            if logits:
                mm(head_in, self._head)

        return run

    def ms(self, tokens: int, logits: int) -> float:
        """GEMM ms of one forward (cached per shape)."""
        key = (tokens, logits)
        if key not in self._cache:
            self._cache[key] = self._measure(tokens, logits) if tokens else 0.0
        return self._cache[key]

    def _measure(self, tokens: int, logits: int) -> float:
        run = self._program(tokens, logits)
        flops = self.dims.flops(tokens, logits)
        if self.device.type != "cuda":
            return _time_ms(run, self.device, reps=3)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()  # cuBLAS workspaces and heuristics before capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run()
        # about a second of replays, at least 3, at most 20
        estimate = _time_ms(graph.replay, self.device, reps=1)
        reps = int(min(20, max(3, 1000 / max(estimate, 1e-3))))
        ms = _time_ms(graph.replay, self.device, reps=reps)
        del graph
        self.last_tflops = flops / ms / 1e9
        return ms


@dataclass
class Forward:
    """One model call as the floor counts it: tokens forwarded (pads excluded) and logit rows."""

    tokens: int
    logits: int


class StepFloor:
    """Records the forwards of a run through `dserve.engine` and prices them with Rooflines.

    `with floor.recording(): run()` records every `dserve.batch.forward` the runners make (the
    real tokens of each row and the logits it asks for); `per_step(steps)` is their GEMM time
    divided by the steps, per precision."""

    def __init__(self, dims: Dims, device: str | torch.device):
        self.dims, self.device = dims, torch.device(device)
        self._rooflines: dict[str, Roofline] = {}
        self.forwards: list[Forward] = []

    def roofline(self, precision: str) -> Roofline:
        if precision not in self._rooflines:
            self._rooflines[precision] = Roofline(self.dims, self.device, precision)
        return self._rooflines[precision]

    def recording(self):
        import contextlib

        import dserve.engine as engine

        @contextlib.contextmanager
        def scope():
            original = engine.forward
            self.forwards = []

            def recorded(model, batch, pool=None):
                rows = batch.rows
                if rows:
                    self.forwards.append(Forward(sum(r.width for r in rows), sum(b - a for a, b in (r.wanted for r in rows))))
                return original(model, batch, pool)

            engine.forward = recorded
            try:
                yield self
            finally:
                engine.forward = original

        return scope()

    def per_step(self, steps: int, precision: str = "bf16") -> float:
        """GEMM ms per step of the recorded forwards in `precision` (bf16 or fp8)."""
        r = self.roofline(precision)
        return sum(r.ms(f.tokens, f.logits) for f in self.forwards) / max(steps, 1)

    def shapes(self) -> dict[tuple[int, int], int]:
        """How many recorded forwards had each (tokens, logits)."""
        counts: dict[tuple[int, int], int] = {}
        for f in self.forwards:
            counts[(f.tokens, f.logits)] = counts.get((f.tokens, f.logits), 0) + 1
        return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llada-8b", help="a directory under benchmarks/shapes, or any with a config.json")
    p.add_argument("--tokens", type=int, nargs="+", default=[32, 1024, 12288], help="tokens per forward")
    p.add_argument("--logits", type=int, nargs="*", help="logit rows per forward (default: min(tokens, 32 per 384))")
    p.add_argument("--precision", nargs="+", default=["bf16", "fp8"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import shape_dir

    dims = dims_from_config(json.loads((shape_dir(args.shape) / "config.json").read_text()))
    logits = args.logits or [t if t <= 1024 else t // 12 for t in args.tokens]  # a full canvas: the block's logits
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"# GEMM floor of one forward, {args.shape} {dims} on {device}")
    rows = []
    for precision in args.precision:
        r = Roofline(dims, args.device, precision)
        for t, lg in zip(args.tokens, logits):
            ms = r.ms(t, lg)
            tflops = dims.flops(t, lg) / ms / 1e9
            rows.append({"precision": precision, "tokens": t, "logits": lg, "ms": ms, "tflops": tflops})
            print(f"{precision:5s} tokens {t:6d} logits {lg:6d}: {ms:9.3f} ms  {tflops:7.1f} TFLOP/s", flush=True)
        del r
    if args.json:
        args.json.write_text(json.dumps({"shape": args.shape, "dims": asdict(dims), "device": device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
