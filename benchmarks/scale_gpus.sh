#!/usr/bin/env bash
# Multi-GPU scaling of the `--gpus N` front: `dserve bench` against it for each worker count, one
# LLaDA-8B-shaped model with random bf16 weights per GPU.
#
#   benchmarks/scale_gpus.sh OUTDIR "1 2 4 8" [extra dserve bench flags]   (SHAPE_DIR: another config)
#
# Per worker count N: start the front, wait until every worker is ready, warm up (graph
# captures, allocator) with 32 x N requests, then measure 96 x N requests at concurrency 32 x N
# (each worker's batch full). Workload: prompt ~128 tokens, 256 output tokens (ignore_eos, so
# every request decodes its whole canvas), fastdllm/dual_cache, 4 tokens per step, block 32:
# the engine benchmark's batch-32 cell, served over HTTP. Writes OUTDIR/bench-N.json and prints
# a table with the scaling ratio against the first count.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-/tmp/dserve-scale}
COUNTS=${2:-"1 2 4 8"}
shift 2 2>/dev/null || true
mkdir -p "$OUT"
EMB=$(python3 -c "import dserve_llada; print(dserve_llada.EMBEDDED_MODEL_DIR)")
# ~128 tokens of prompt with the byte-level tokenizer (chat template included)
WORKLOAD=(--prompt-len 15 --max-tokens 256 --engine fastdllm --algorithm dual_cache --steps 64 --block-length 32
          --param ignore_eos=true --temperature 0 --no-progress)

for N in $COUNTS; do
  PORT=$((8400 + N))
  dserve --gpus "$N" --port "$PORT" --model "${SHAPE_DIR:-benchmarks/shapes/llada-8b}" --load-format dummy --tokenizer "$EMB" \
    --max-batch-size 32 --max-queue-size 100000 --worker-log-dir "$OUT/workers-$N" > "$OUT/front-$N.log" 2>&1 &
  FRONT=$!
  python3 - "$PORT" "$OUT/workers-$N.json" <<'EOF'
import sys, time, httpx
url = f"http://127.0.0.1:{sys.argv[1]}"
# /health/ready turns 200 with the first healthy worker; a scaling point needs all of them
status = None
for _ in range(900):
    try:
        status = httpx.get(url + "/worker-status", timeout=2).json()
        if status["healthy_workers"] == status["total_workers"]:
            break
    except (httpx.HTTPError, ValueError, KeyError):
        pass
    time.sleep(1)
else:
    sys.exit(f"not every worker became healthy: {status}")
open(sys.argv[2], "w").write(httpx.get(url + "/worker-status", timeout=10).text)
EOF
  dserve bench --url "http://127.0.0.1:$PORT" --num-requests $((32 * N)) --concurrency $((32 * N)) "${WORKLOAD[@]}" "$@" \
    > "$OUT/warmup-$N.txt" 2>&1
  dserve bench --url "http://127.0.0.1:$PORT" --num-requests $((96 * N)) --concurrency $((32 * N)) "${WORKLOAD[@]}" "$@" \
    --output "$OUT/bench-$N.json" > "$OUT/bench-$N.txt" 2>&1
  # per-worker routing and batch statistics of the measured run (is every worker's batch full?)
  python3 -c "import httpx, sys; print(httpx.get(sys.argv[1] + '/worker-status', timeout=10).text)" \
    "http://127.0.0.1:$PORT" > "$OUT/workers-after-$N.json" 2>&1
  kill -TERM "$FRONT"
  wait "$FRONT"
done

python3 - "$OUT" $COUNTS <<'EOF'
import json, sys
from pathlib import Path
out, counts = Path(sys.argv[1]), sys.argv[2:]
rows, base = [], None
for n in counts:
    f = out / f"bench-{n}.json"
    if not f.exists():
        print(f"{n} workers: no result (see {out}/front-{n}.log)")
        continue
    r = json.loads(f.read_text())
    s = r.get("summary", r)
    rps, tps = s["requests_per_s"], s["output_tokens_per_s"]
    base = base or (int(n), rps)
    rows.append((n, s.get("requests_ok"), s.get("requests_failed"), rps, tps, rps / base[1] * base[0] if base else None))
print("| workers | ok | failed | req/s | output tok/s | scaling vs 1 |")
print("|---|---|---|---|---|---|")
for n, ok, failed, rps, tps, ratio in rows:
    print(f"| {n} | {ok} | {failed} | {rps:.2f} | {tps:.1f} | {ratio:.2f}x |")
EOF
