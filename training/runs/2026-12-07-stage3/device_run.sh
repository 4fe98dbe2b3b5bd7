#!/usr/bin/env bash
# #23: a stage 3 for llada-tiny-instruct, four variants trained side by side on one GPU
# (the model is tiny: each process is launch-bound, so they share the GPU well).
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > /tmp/env.txt 2>&1 || cat /tmp/env.txt
nvidia-smi -L
CK=plugins/llada/dserve_llada/checkpoints/llada-tiny-instruct
ALL=reverse,sort,add,swap,upper,repeat,replace
run() {  # name, then train_tiny args
  local name=$1; shift
  timeout 500 python3 training/train_tiny.py --device cuda --init-from $CK --max-minutes ${MINUTES:-5.5} \
     --out /tmp/$name --tar $OUT/$name.tar.gz "$@" > $OUT/$name.log 2>&1
  echo "$name exit $?"
}
run a_uniform_lr5e4 --steps 2500 --lr 5e-4 --warmup 50 --seed 3 &
run b_sort2_lr5e4 --steps 2500 --lr 5e-4 --warmup 50 --seed 4 --kinds $ALL,sort &
run c_uniform_lr1e3 --steps 2500 --lr 1e-3 --warmup 100 --seed 5 &
# LLaDA2 (#26) from scratch beside them (the 2026-12-07 run used the llada2 branch as of ~03:58 UTC,
# carried under .dev/l2; since merged, so it runs from the repository root)
( timeout 520 python3 training/train_tiny.py --arch llada2 --device cuda --steps 3500 --max-minutes 5.5 \
  --out /tmp/llada2_scratch --tar $OUT/llada2_scratch.tar.gz > $OUT/llada2_scratch.log 2>&1; echo "llada2 exit $?" ) &
wait
grep -H "held-out\|determinism\|trained " $OUT/*.log
ls -la $OUT
