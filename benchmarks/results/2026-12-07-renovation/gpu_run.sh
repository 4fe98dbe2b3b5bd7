#!/usr/bin/env bash
# One device call: GPU tests on the renovated tree, then engine cells before (7bb631e, in
# .dev/before) and after (this tree), one after the other on the same GPU.
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > $OUT/env.txt 2>&1
nvidia-smi -L > $OUT/device.txt; python3 -c "import torch; print(torch.__version__)" >> $OUT/device.txt
timeout 230 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider > $OUT/tests.txt 2>&1; echo "rc=$?" >> $OUT/tests.txt
ALL="llada/reference fastdllm/dual_cache fastdllm/prefix_cache dinfer/dinfer_blockwise"
ARGS="--batch 1 8 32 --tokens-per-step 4 --algorithms $ALL"
B=.dev/before
OLDPATH=$B/core:$B/plugins/llada:$B/plugins/fastdllm:$B/plugins/dinfer:$B/plugins/dream:$B/plugins/nemotron
timeout 170 python3 benchmarks/bench_engine.py $ARGS --json $OUT/after.json > $OUT/after.txt 2>&1
DSERVE_PLUGINS=llada,fastdllm,dinfer PYTHONPATH=$OLDPATH:${PYTHONPATH:-} timeout 170 python3 $B/benchmarks/bench_engine.py $ARGS --json $OUT/before.json > $OUT/before.txt 2>&1
tail -20 $OUT/after.txt $OUT/before.txt; tail -3 $OUT/tests.txt
