#!/usr/bin/env bash
# One device call (one H100, under 8 minutes): the embedded Dream and Nemotron models on all 700
# held-out examples (issue #23), and the echo-vs-estimator ranking agreement on 700 items of the
# embedded LLaDA model. Each part is bounded by `timeout` and writes its results as it finishes.
#   run: bash benchmarks/results/2026-12-07-scoring/gpu_run.sh   (with $OUT set)
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > $OUT/env.txt 2>&1
nvidia-smi -L > $OUT/device.txt; python3 -c "import torch; print(torch.__version__)" >> $OUT/device.txt

serve() {  # serve MODEL_DIR on PORT in the background, wait until it lists a model
  timeout "$3" python3 -m dserve serve --model "$1" --port "$2" --max-batch-size 64 > "$OUT/server-$2.log" 2>&1 &
  SERVER_PID=$!
  python3 - "$2" <<'PY'
import sys, time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health/ready", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(1)
sys.exit(1)
PY
}

# 1. Dream embedded model, all 700 (its four algorithms and Fast-dLLM's dual cache on it)
serve plugins/dream/dserve_dream/checkpoints/dream-tiny-instruct 8130 170 && \
timeout 150 python3 -m dserve eval --url http://127.0.0.1:8130 --samples 700 --concurrency 64 --no-progress \
  --algorithm dream/entropy --algorithm dream/maskgit_plus --algorithm dream/topk_margin --algorithm dream/origin \
  --algorithm fastdllm/dual_cache --output $OUT/dream-700.json > $OUT/dream-700.txt 2>&1
kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null

# 2. Nemotron embedded model, all 700 (its three algorithms)
serve plugins/nemotron/dserve_nemotron/checkpoints/nemotron-tiny-instruct 8131 150 && \
timeout 130 python3 -m dserve eval --url http://127.0.0.1:8131 --samples 700 --concurrency 64 --no-progress \
  --algorithm nemotron/block_diffusion --algorithm nemotron/ar --algorithm nemotron/linear_spec \
  --output $OUT/nemotron-700.json > $OUT/nemotron-700.txt 2>&1
kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null

# 3. echo per-token values vs the Monte Carlo estimator (mc_num 128), 700 items, embedded LLaDA
serve plugins/llada/dserve_llada/checkpoints/llada-tiny-instruct 8132 160 && \
timeout 140 python3 benchmarks/scoring_agreement.py --url http://127.0.0.1:8132 --items 700 --mc-num 128 \
  --concurrency 32 --output $OUT/agreement-700.json > $OUT/agreement-700.txt 2>&1
kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null

tail -12 $OUT/dream-700.txt $OUT/nemotron-700.txt $OUT/agreement-700.txt
