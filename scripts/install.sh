#!/usr/bin/env bash
# Install dserve and its first-party plugins into the current Python environment.
# torch: a machine that already has one (say, a CUDA build on a GPU host) keeps it; a machine
# with none gets torch 2.13.0, whose CPU build this project's CI machines hold locally. On
# other CPU-only machines set PIP_INDEX_URL=https://download.pytorch.org/whl/cpu first to
# avoid the multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
"$PYTHON" -m pip install --quiet -e ".${extras}" -e plugins/llada -e plugins/fastdllm -e plugins/dinfer -e plugins/dream -e plugins/nemotron
