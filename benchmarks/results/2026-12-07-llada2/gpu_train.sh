#!/usr/bin/env bash
# One device call (< 8 min on one H100): train the tiny LLaDA2 MoE checkpoint with the committed
# seeded script, then measure its held-out quality through a real server (all 700 examples).
# Writes $OUT/llada2-tiny-instruct/ (checkpoint + eval.json), $OUT/llada2-tiny-instruct.tar.gz,
# $OUT/train.txt, $OUT/server_eval.json / .txt. Each part is bounded by `timeout`.
set -u
export PYTHONUNBUFFERED=1
source benchmarks/device_env.sh > $OUT/env.txt 2>&1
nvidia-smi -L > $OUT/device.txt; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> $OUT/device.txt
CKPT=$OUT/llada2-tiny-instruct
# 1. training: seed 0, batch 256, 3000 steps (stops early at 4.5 minutes), final held-out
#    evaluation by the script itself on 700 examples (the runner, no server)
timeout 330 python3 training/train_tiny.py --arch llada2 --device cuda --out $CKPT \
  --steps 3000 --max-minutes 4.5 --batch-size 256 --d-model 128 --n-layers 6 --n-heads 4 --mlp-hidden 256 \
  --eval-samples 700 --log-every 250 --tar $OUT/llada2-tiny-instruct.tar.gz > $OUT/train.txt 2>&1
echo "train rc=$?" >> $OUT/train.txt
tail -4 $OUT/train.txt
# 2. held-out quality through a server: all 700 examples, the family's default algorithm
#    (llada2/llada2: threshold 0.95, 32 steps per block), temperature 0
python3 -m dserve --model $CKPT --device cuda --port 8140 --max-batch-size 64 > $OUT/server.txt 2>&1 &
SERVER=$!
for _ in $(seq 60); do python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8140/health/ready', timeout=2)" 2>/dev/null && break; sleep 2; done
timeout 90 python3 -m dserve eval --url http://127.0.0.1:8140 --num-samples 700 --concurrency 64 --max-tokens 64 \
  --algorithm llada2/llada2 --repeat-check 5 --output $OUT/server_eval.json > $OUT/server_eval.txt 2>&1
echo "eval rc=$?" >> $OUT/server_eval.txt
kill $SERVER; wait $SERVER 2>/dev/null
cat $OUT/server_eval.txt
