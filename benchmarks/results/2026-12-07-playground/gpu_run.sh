#!/usr/bin/env bash
# What the canvas stream costs, on one GPU, over HTTP: `dserve bench` with plain streams and
# with `stream_canvas: true` streams, alternating (plain, canvas, plain, canvas) on the same
# server so that drift hits both, for two models:
#   - llada-8b: LLaDA-8B-shaped random bf16 weights (--load-format dummy), the realistic step time;
#   - tiny: the embedded 3.5M model, where a step costs almost nothing and any per-step overhead
#     of the events (building, JSON, SSE writes on the event loop) shows most.
# Workload (scale_gpus.sh's): ~128-token prompts, 256 output tokens with ignore_eos,
# fastdllm/dual_cache, 4 tokens per step, block 32, 96 requests at concurrency 32 (a full batch);
# a canvas request gets 64 canvas chunks. If .dev/main holds a copy of main (`mkdir -p .dev/main &&
# git archive main | tar -x -C .dev/main`, carried with the call), plain streams on main are
# measured too: the cost of the feature when no request asks for it.
#
#   OUT=... bash benchmarks/results/2026-12-07-playground/gpu_run.sh     (about 5 minutes on an H100)
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > "$OUT/env.txt" 2>&1
nvidia-smi -L > "$OUT/device.txt"; python3 -c "import torch; print(torch.__version__)" >> "$OUT/device.txt"
EMB=$(python3 -c "import dserve_llada; print(dserve_llada.EMBEDDED_MODEL_DIR)")
WORKLOAD=(--prompt-len 15 --max-tokens 256 --engine fastdllm --algorithm dual_cache --steps 64 --block-length 32
          --param ignore_eos=true --temperature 0 --no-progress --concurrency 32)
PORT=8471

serve() {  # $1: label, $2: PYTHONPATH prefix ("" for this tree), rest: serve flags
  local label=$1 path=$2; shift 2
  PYTHONPATH=$path${PYTHONPATH:+:$PYTHONPATH} timeout 400 python3 -m dserve serve --port $PORT --max-batch-size 32 \
    --max-queue-size 10000 "$@" > "$OUT/server-$label.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 240); do curl -sf 127.0.0.1:$PORT/health/ready > /dev/null && return 0; sleep 1; done
  echo "$label: server not ready" >> "$OUT/summary.txt"; return 1
}
bench() {  # $1: output name, rest: extra bench flags
  local name=$1; shift
  timeout 150 python3 -m dserve bench --url http://127.0.0.1:$PORT "${WORKLOAD[@]}" "$@" --output "$OUT/$name.json" \
    > "$OUT/$name.txt" 2>&1
  python3 - "$OUT/$name.json" "$name" >> "$OUT/summary.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["summary"]
print(f"{sys.argv[2]:22} ok={r['requests_ok']} failed={r['requests_failed']} req/s={r['requests_per_s']:.2f} "
      f"out tok/s={r['output_tokens_per_s']:.1f} latency p50={r['latency_s']['p50']:.2f}s ttft p50={r['ttft_s']['p50']:.2f}s")
PY
}
stop() { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }

for model in llada-8b tiny; do
  if [ $model = tiny ]; then flags=(); else flags=(--model benchmarks/shapes/llada-8b --load-format dummy --tokenizer "$EMB"); fi
  serve "$model" "" "${flags[@]}" || continue
  bench "$model-warmup" --num-requests 32 > /dev/null
  for round in 1 2; do
    bench "$model-plain-$round" --num-requests 96
    bench "$model-canvas-$round" --num-requests 96 --param stream_canvas=true
  done
  stop
  if [ -d .dev/main ]; then
    M=.dev/main
    serve "$model-main" "$M/core:$M/plugins/llada:$M/plugins/fastdllm:$M/plugins/dinfer:$M/plugins/dream:$M/plugins/nemotron" \
      "${flags[@]}" || continue
    bench "$model-main-warmup" --num-requests 32 > /dev/null
    bench "$model-main-plain-1" --num-requests 96
    bench "$model-main-plain-2" --num-requests 96
    stop
  fi
done
cat "$OUT/summary.txt"
