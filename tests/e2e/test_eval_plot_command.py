"""`dserve eval --plot` against a real server: the table as usual, and a PNG with one point per
evaluated algorithm."""

import subprocess
import sys
from pathlib import Path

import pytest

DSERVE_SCRIPT = Path(sys.executable).with_name("dserve")
DSERVE = [str(DSERVE_SCRIPT)] if DSERVE_SCRIPT.exists() else [sys.executable, "-m", "dserve"]


def test_eval_plot_writes_a_png(server, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "quality.png"
    argv = [*DSERVE, "eval", "--url", server.url, "--samples", "4", "--no-progress", "--plot", str(png)]
    argv += ["--algorithm", "llada/reference", "--algorithm", "fastdllm/dual_cache"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote {png} (2 algorithms)" in done.stderr
    assert "llada/reference" in done.stdout and "fastdllm/dual_cache" in done.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
