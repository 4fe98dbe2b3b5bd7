#!/usr/bin/env bash
# One device call (< 8 min on one H100): the LLaDA2 GPU tests, then the engine benchmark at the
# LLaDA2.0-mini shape (random bf16 weights), dserve's llada2/llada2 next to the published
# modeling code and generate loop (brought to the device in .dev/pub/llada2/, never committed:
# modeling_llada2_moe.py and configuration_llada2_moe.py of ZHZisZZ/dllm@ca17675
# dllm/pipelines/llada2/models/). Each part is bounded by `timeout`.
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > $OUT/env.txt 2>&1
nvidia-smi -L > $OUT/device.txt; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> $OUT/device.txt
timeout 120 python3 -m pytest -m gpu tests/gpu/test_llada2_gpu.py -q -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "rc=$?" >> $OUT/tests.txt
tail -3 $OUT/tests.txt
PUB=""; [ -f .dev/pub/llada2/modeling_llada2_moe.py ] && PUB="--published-dir .dev/pub"
timeout 280 python3 benchmarks/bench_llada2.py --shape llada2-mini --batch 1 32 --tokens-per-step 1 4 \
  $PUB --published-sample 2 --json $OUT/bench.json > $OUT/bench.txt 2>&1; echo "rc=$?" >> $OUT/bench.txt
tail -8 $OUT/bench.txt
