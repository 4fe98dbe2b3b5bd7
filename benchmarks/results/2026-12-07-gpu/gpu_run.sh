#!/usr/bin/env bash
# Issue #25 on one GPU (nvidia-h100-x1), one device call of under 8 minutes:
#
#   bash benchmarks/results/2026-12-07-gpu/gpu_run.sh        # $OUT: the output folder
#   (carry .whl, the wheels device_env.sh installs, and .dev/before, the 7bb631e tree:
#    git archive 7bb631e core plugins benchmarks | tar -x -C .dev/before, *.safetensors > 100k deleted;
#    .dev/published too for the published batch-32 cells, if there is time left for them)
#
# Parts, in order of priority; each is bounded by `timeout`, writes $OUT/<part>.txt (and .json)
# as it goes, and a failing or cut part never stops the others. A part that would start with
# less than 25 s left is skipped and says so. progress.txt logs each part's start, end and rc.
#   roofline   the GEMM floor of one forward (LLaDA-8B shape) at 32, 1024 and 12288 tokens, bf16 and fp8
#   cells      engine cells with their floors and ratios, bf16 then fp8 in the same process:
#              batch 1 one token/step (dual cache, dInfer), batch 1 four tokens/step (dual cache),
#              batch 32 four tokens/step (dual cache; the cheaper refresh every 8 and every 2 blocks)
#   tests      python -m pytest -q -m gpu tests/gpu
#   dinfer_b8  dinfer_blockwise at batch 8, four tokens/step: this tree and 7bb631e alternating
#   unmeasured batch-32 one-token dual cache and fastdllm/apd at batch 32 (+ the published
#              Fast-dLLM loops at batch 32, one token/step, if .dev/published is here)
#   memory     dual cache, four tokens/step, generation 512 at batch 1 and 32 (peak GiB; 256 is in cells)
#   compile    --compile on the batch-1 and batch-32 dual-cache cells (compile time: the warm-up column)
#   profile    benchmarks/profile_step.py summary of the batch-1 and batch-32 dual-cache steps
set -u
export PYTHONUNBUFFERED=1
START=$SECONDS
LIMIT=${LIMIT:-465}  # seconds for the whole script (the call's limit is 600; 8 minutes asked)
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"

log() { echo "[$((SECONDS - START))s] $*" | tee -a "$OUT/progress.txt"; }

# part NAME BUDGET CMD...: CMD bounded by min(BUDGET, time left), output in $OUT/NAME.txt
part() {
  local name=$1 budget=$2 left rc
  shift 2
  left=$((LIMIT - (SECONDS - START)))
  if [ "$left" -lt 25 ]; then
    log "skip $name: ${left}s left"
    echo "skipped: ${left}s left of ${LIMIT}s" >> "$OUT/$name.txt"
    return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  log "start $name (limit ${budget}s)"
  timeout -k 5 "$budget" "$@" >> "$OUT/$name.txt" 2>&1
  rc=$?
  log "end $name rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  return 0
}

source benchmarks/device_env.sh > "$OUT/env.txt" 2>&1
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; git log --oneline -1 2>/dev/null; } > "$OUT/device.txt" 2>&1
log "env ready"

B=benchmarks/bench_engine.py

part roofline 40 python3 benchmarks/roofline.py --json "$OUT/roofline.json"

part cells 175 python3 $B --fp8-too --json "$OUT/cells.json" \
  --cell fastdllm/dual_cache 1 1 \
  --cell dinfer/dinfer_blockwise 1 1 \
  --cell fastdllm/dual_cache 1 4 \
  --cell fastdllm/dual_cache 32 4 \
  --cell fastdllm/dual_cache+refresh_every=8 32 4 \
  --cell fastdllm/dual_cache+refresh_every=2 32 4

part tests 190 python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rfE

# dInfer at batch 8 after (this tree) and before (7bb631e), alternating; the floor is skipped so
# both runs do the same work (the old benchmark has none)
ARGS="--batch 8 --tokens-per-step 4 --algorithms dinfer/dinfer_blockwise"
OLD=.dev/before
OLDPATH=$OLD/core:$OLD/plugins/llada:$OLD/plugins/fastdllm:$OLD/plugins/dinfer:$OLD/plugins/dream:$OLD/plugins/nemotron
for i in 1 2; do
  part dinfer_b8 45 bash -c "echo '== after $i'; python3 $B $ARGS --no-floor --json $OUT/dinfer_b8_after$i.json"
  if [ -d $OLD/core ]; then
    part dinfer_b8 45 bash -c "echo '== before $i'; DSERVE_PLUGINS=llada,fastdllm,dinfer PYTHONPATH=$OLDPATH:\${PYTHONPATH:-} python3 $OLD/$B $ARGS --json $OUT/dinfer_b8_before$i.json"
  else
    echo "no $OLD: the 7bb631e tree was not carried" >> "$OUT/dinfer_b8.txt"
  fi
done

part unmeasured 100 python3 $B --json "$OUT/unmeasured.json" --cell fastdllm/dual_cache 32 1 --cell fastdllm/apd 32 4
part memory 70 python3 $B --gen 512 --no-floor --json "$OUT/memory_gen512.json" \
  --cell fastdllm/dual_cache 1 4 --cell fastdllm/dual_cache 32 4
part compile 120 python3 $B --compile --json "$OUT/compile.json" \
  --cell fastdllm/dual_cache 1 1 --cell fastdllm/dual_cache 32 4
part profile 90 python3 benchmarks/profile_step.py --algorithm fastdllm/dual_cache --batch 1 32 --tokens-per-step 4 \
  --top 12 --json "$OUT/profile.json"
if [ -d .dev/published ]; then
  part published_b32k1 200 python3 $B --batch 32 --tokens-per-step 1 --algorithms fastdllm/dual_cache \
    --published-dir .dev/published --published fastdllm/prefix_cache fastdllm/dual_cache --json "$OUT/published_b32k1.json"
fi

{
  echo "# $(head -2 "$OUT/device.txt" | tr '\n' ' ')"
  for f in roofline cells unmeasured memory compile; do
    [ -f "$OUT/$f.txt" ] && { echo "## $f"; grep -v "^\s*$" "$OUT/$f.txt" | tail -16; }
  done
  echo "## dinfer_b8"; grep -hE "^==|dinfer/dinfer_blockwise" "$OUT/dinfer_b8.txt" 2>/dev/null
  echo "## tests"; tail -4 "$OUT/tests.txt" 2>/dev/null
  echo "## progress"; cat "$OUT/progress.txt"
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
