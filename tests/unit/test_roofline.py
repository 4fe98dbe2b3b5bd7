"""benchmarks/roofline.py (the GEMM floor of a step) and its use by bench_engine.py, on the CPU
with tiny shapes: the floor prices exactly the forwards a cell made."""

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_engine  # noqa: E402
import roofline  # noqa: E402


@pytest.fixture
def tiny_shape(tmp_path):
    config = json.loads((BENCH / "shapes" / "llada-small" / "config.json").read_text())
    config.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, embedding_size=512, vocab_size=512)
    config.update(mask_token_id=511, eos_token_id=510, pad_token_id=510, max_sequence_length=512)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_dims_of_the_published_shapes():
    llada = roofline.dims_from_config(json.loads((BENCH / "shapes" / "llada-8b" / "config.json").read_text()))
    assert llada == roofline.Dims(layers=32, d_model=4096, q_out=4096, kv_out=4096, ff=12288, vocab=126464)
    # 32 tokens through LLaDA-8B's projections and head: 2 x 32 x (32 x 218M + 518M) FLOPs
    assert llada.flops(32, 32) == pytest.approx(2 * 32 * (32 * 4096 * 53248 + 126464 * 4096))
    dream = roofline.dims_from_config(json.loads((BENCH / "shapes" / "dream-7b" / "config.json").read_text()))
    assert dream.kv_out < dream.q_out  # grouped-query attention


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_roofline_times_a_forward_and_caches_it(precision):
    r = roofline.Roofline(roofline.Dims(2, 64, 64, 32, 128, 256), "cpu", precision)
    ms = r.ms(48, 16)
    assert ms > 0 and r.ms(48, 16) == ms and r.ms(0, 0) == 0.0


def test_bench_prints_each_cells_floor_and_ratio(tiny_shape, tmp_path, capsys):
    out = tmp_path / "cells.json"
    argv = ["--shape", str(tiny_shape), "--device", "cpu", "--batch", "1", "--tokens-per-step", "8"]
    argv += ["--prompt", "16", "--gen", "64", "--algorithms", "fastdllm/dual_cache", "--json", str(out)]
    assert bench_engine.main(argv) == 0
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["steps"] == 8 and cell["floor_precision"] == "bf16"
    assert 0 < cell["floor_ms_per_step"] and cell["warmup_s"] > 0
    printed = capsys.readouterr().out
    assert "floor ms" in printed and "ratio" in printed


def test_the_floor_prices_the_forwards_of_the_schedule(tiny_shape):
    """Dual cache, 2 sequences of prompt 16 + gen 64, block 32, 4 tokens per step: per block one
    full refresh (2 x 80 tokens, logits at the 2 blocks) and 7 block steps (2 x 32 tokens); with
    refresh_every=2 the second block starts with the previous block and its own instead."""
    model, shape = bench_engine.build_model(str(tiny_shape), "cpu")
    floor = roofline.StepFloor(roofline.dims_from_config(shape), "cpu")
    from dserve.plugins import get_registry

    alg = get_registry().engine("fastdllm").algorithm("dual_cache")
    prompts = bench_engine.random_prompts(model, 2, 16)
    for every, shapes in ((1, {(160, 64): 2, (64, 64): 14}), (2, {(160, 64): 1, (128, 64): 1, (64, 64): 14})):
        bench_engine.REFRESH_EVERY = every
        try:
            run = bench_engine.ours(model, None, alg, prompts, 64, 32, 4)
            with floor.recording():
                steps = run()
        finally:
            bench_engine.REFRESH_EVERY = 1
        assert steps == 16 and floor.shapes() == shapes
        assert floor.per_step(steps) > 0 and floor.per_step(steps, "fp8") > 0
    import dserve.engine

    assert dserve.engine.forward.__name__ == "forward"  # the recording is undone


def test_fp8_floor_is_measured_with_scaled_mm_on_cpu():
    assert hasattr(torch, "_scaled_mm")
    r = roofline.Roofline(roofline.Dims(1, 32, 32, 32, 64, 64), "cpu", "fp8")
    assert r.ms(16, 16) > 0


def test_cells_with_parameters_and_fp8_in_the_same_run(tiny_shape, tmp_path):
    out = tmp_path / "cells.json"
    argv = ["--shape", str(tiny_shape), "--device", "cpu", "--prompt", "16", "--gen", "64", "--json", str(out)]
    argv += ["--cell", "fastdllm/dual_cache+refresh_every=2", "1", "8", "--fp8-too"]
    assert bench_engine.main(argv) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [c["algorithm"] for c in cells] == ["fastdllm/dual_cache+refresh_every=2", "fastdllm/dual_cache+refresh_every=2 [fp8]"]
    assert [c["floor_precision"] for c in cells] == ["bf16", "fp8"]
    assert all(c["steps"] == 8 and c["ratio"] > 0 for c in cells)
