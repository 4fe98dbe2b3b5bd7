#!/usr/bin/env bash
# Install dserve and its first-party plugins into the current Python environment.
#
#   scripts/install.sh          the server
#   scripts/install.sh --test   the server plus the test tools, at the versions in
#                               constraints/test.txt (a fresh install reproduces the suite)
#   scripts/install.sh --test-all   also lm-eval, which only slow tests use (`make test-all`)
#
# torch: a machine that already has one (say, a CUDA build on a GPU host) keeps it. A machine
# with none gets torch 2.13.0: the CUDA build from PyPI where an NVIDIA GPU is present, the CPU
# build from PyTorch's CPU wheel index otherwise (PyPI's default torch is a multi-GB CUDA
# build). DSERVE_TORCH_INDEX overrides the index the CPU build comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0

has_nvidia_gpu() {
  [ -e /proc/driver/nvidia/version ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
}

if existing=$("$PYTHON" -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "install.sh: keeping the installed torch $existing"
elif has_nvidia_gpu; then
  echo "install.sh: no torch installed; an NVIDIA GPU is present: torch==$TORCH_VERSION (CUDA build) from PyPI"
  "$PYTHON" -m pip install --progress-bar on "torch==$TORCH_VERSION"
else
  index=${DSERVE_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
  echo "install.sh: no torch installed and no NVIDIA GPU: torch==$TORCH_VERSION CPU build from $index"
  # --index-url for torch alone: its CPU wheels live only there. pip's configured find-links
  # still apply, so a machine holding the CPU wheel locally uses it.
  "$PYTHON" -m pip install --progress-bar on --index-url "$index" "torch==$TORCH_VERSION"
fi

# The playground's browser test (tests/e2e/test_playground.py) drives the distribution's headless
# Chromium with Selenium (a test tool's own browser download would need the open internet). Only
# with --test, only as root where apt-get exists; elsewhere the test is skipped and says why.
install_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "install.sh: chromium and chromedriver already installed"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: chromium and chromium-driver from apt-get (the playground's browser test)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
      echo "install.sh: apt-get could not install chromium; tests/e2e/test_playground.py will be skipped"
    fi
  else
    echo "install.sh: not root or no apt-get: chromium not installed; tests/e2e/test_playground.py will be skipped"
  fi
}

packages=(-e plugins/llada -e plugins/fastdllm -e plugins/dinfer -e plugins/dream -e plugins/nemotron -e plugins/llada2)
if [ "${1:-}" = "--test" ] || [ "${1:-}" = "--test-all" ]; then
  extras=test,plot
  # lm-eval (datasets, pyarrow, scikit-learn, ...) is for the slow lm-eval tests alone
  [ "$1" = "--test-all" ] && extras=$extras,lm-eval
  echo "install.sh: dserve, its plugins and the test tools [$extras] (pinned by constraints/test.txt)"
  "$PYTHON" -m pip install --progress-bar on -c constraints/test.txt -e ".[$extras]" "${packages[@]}"
  install_chromium
else
  echo "install.sh: dserve and its plugins"
  "$PYTHON" -m pip install --progress-bar on -e . "${packages[@]}"
fi
