#!/usr/bin/env bash
# The GPU measurements and tests the open issues still need, for one device call each section.
#
#   benchmarks/gpu_checks.sh OUTDIR SECTION...
#
# Sections (each writes OUTDIR/SECTION.txt and, where there is one, OUTDIR/SECTION.json):
#   tests     pytest -m gpu tests/gpu (graphed == eager for every graphable runner, real OOM)
#   engine    LLaDA-8B engine cells at batch 1, 8 and 32 (1 and 4 tokens per step), dserve only
#   published the same cells' published loops (needs .dev/published; see bench_engine.py), and the
#             published dInfer managers next to dinfer/dinfer_blockwise (threshold decoding: one schedule)
#   families  Nemotron-Labs-Diffusion-8B and Dream-7B shapes, batch 1 and 32
#   quant     LLaDA-8B dual cache at batch 1 and 32 with --quantization 8bit, then 4bit weights; then
#             the embedded model's held-out accuracy through a GPU server, bf16 and 4bit (int4 has
#             no CPU kernel here, so its quality can only be measured on the device)
#   published-b32k1  what the 2026-11-28 run left unmeasured, part 1 (~7 min): the batch-32
#             one-token published Fast-dLLM cells next to ours
#   memory    part 2 (~3 min): apd at batch 32, and GPU memory per request at generation 256 and
#             512 (dual cache, batch 1 and 32: (peak32 - peak1) / 31)
#   scale     the engine's batch-32 dual-cache cell on GPU 0 (the HTTP-versus-engine baseline), then
#             benchmarks/scale_gpus.sh over 1, 2, 4, 8 workers (as many as there are GPUs)
# Source benchmarks/device_env.sh first on a bare device machine.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:?usage: gpu_checks.sh OUTDIR SECTION...}
shift
mkdir -p "$OUT"
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
OURS="llada/reference fastdllm/basic fastdllm/prefix_cache fastdllm/dual_cache fastdllm/apd dinfer/dinfer_blockwise"

for section in "$@"; do
  case "$section" in
    tests)
      python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider > "$OUT/tests.txt" 2>&1 ;;
    engine)
      python3 benchmarks/bench_engine.py --batch 1 8 32 --tokens-per-step 1 4 --algorithms $OURS \
        --json "$OUT/engine.json" > "$OUT/engine.txt" 2>&1 ;;
    published)
      python3 benchmarks/bench_engine.py --batch 1 32 --tokens-per-step 1 4 --algorithms fastdllm/dual_cache \
        --published-dir .dev/published --json "$OUT/published.json" > "$OUT/published.txt" 2>&1
      python3 benchmarks/bench_engine.py --batch 1 32 --tokens-per-step 1 --algorithms dinfer/dinfer_blockwise \
        --published-dir .dev/published --published dinfer/vicinity_dual dinfer/blockwise_dual \
        --json "$OUT/published-dinfer.json" >> "$OUT/published.txt" 2>&1 ;;
    families)
      python3 benchmarks/bench_engine.py --shape nemotron-labs-diffusion-8b --batch 1 32 --tokens-per-step 1 4 \
        --json "$OUT/nemotron.json" > "$OUT/families.txt" 2>&1
      python3 benchmarks/bench_engine.py --shape dream-7b --batch 1 32 --tokens-per-step 4 \
        --algorithms dream/entropy fastdllm/dual_cache --json "$OUT/dream.json" >> "$OUT/families.txt" 2>&1 ;;
    quant)
      python3 benchmarks/bench_engine.py --batch 1 32 --tokens-per-step 4 --algorithms fastdllm/dual_cache \
        --quantization 8bit --json "$OUT/quant.json" > "$OUT/quant.txt" 2>&1
      python3 benchmarks/bench_engine.py --batch 1 32 --tokens-per-step 4 --algorithms fastdllm/dual_cache \
        --quantization 4bit --json "$OUT/quant4.json" >> "$OUT/quant.txt" 2>&1
      for weights in bf16 4bit; do
        # the embedded checkpoint is float32: ask for bf16 explicitly (4bit loads in bf16 by itself)
        flags=$([ "$weights" = 4bit ] && echo "--quantization 4bit" || echo "--dtype bfloat16")
        dserve serve --device cuda --port 8134 --max-batch-size 64 $flags > "$OUT/quant-server-$weights.log" 2>&1 &
        server=$!
        echo "## embedded model, $weights weights, GPU server" >> "$OUT/quant.txt"
        dserve eval --url http://127.0.0.1:8134 --num-samples 100 --concurrency 64 --max-tokens 64 \
          --algorithm llada/reference --algorithm fastdllm/dual_cache --param threshold=0.9 --repeat-check 5 \
          --ready-timeout 180 --output "$OUT/quality-$weights.json" >> "$OUT/quant.txt" 2>&1
        kill "$server"; wait "$server"
      done ;;
    published-b32k1)
      python3 benchmarks/bench_engine.py --batch 32 --tokens-per-step 1 --algorithms fastdllm/basic fastdllm/prefix_cache \
        --published-dir .dev/published --published fastdllm/generate fastdllm/prefix_cache \
        --json "$OUT/published-b32k1.json" > "$OUT/published-b32k1.txt" 2>&1 ;;
    memory)
      python3 benchmarks/bench_engine.py --batch 32 --tokens-per-step 4 --algorithms fastdllm/apd \
        --json "$OUT/apd-b32.json" > "$OUT/memory.txt" 2>&1
      for gen in 256 512; do
        python3 benchmarks/bench_engine.py --batch 1 32 --tokens-per-step 4 --gen "$gen" --algorithms fastdllm/dual_cache \
          --json "$OUT/memory-gen$gen.json" >> "$OUT/memory.txt" 2>&1
      done ;;
    scale)
      python3 benchmarks/bench_engine.py --batch 32 --tokens-per-step 4 --algorithms fastdllm/dual_cache \
        --json "$OUT/scale-engine.json" > "$OUT/scale-engine.txt" 2>&1
      counts=$(for n in 1 2 4 8; do [ "$n" -le "$GPUS" ] && printf '%s ' "$n"; done)
      bash benchmarks/scale_gpus.sh "$OUT/scale" "$counts" > "$OUT/scale.txt" 2>&1 ;;
    *)
      echo "unknown section: $section" >&2; exit 2 ;;
  esac
done
