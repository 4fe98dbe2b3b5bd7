"""`dserve eval --plot`: the PNG of accuracy against forward passes per token."""

import pytest

from dserve_ops.evaluation.plot import plot_accuracy_vs_nfe


def test_one_point_per_algorithm_with_an_nfe_count(tmp_path):
    pytest.importorskip("matplotlib")
    results = [
        {"algorithm": "llada/reference", "params": {}, "accuracy": 0.94, "nfe_per_token": 3.1},
        {"algorithm": "fastdllm/dual_cache", "params": {"threshold": 0.9}, "accuracy": 0.92, "nfe_per_token": 0.8},
        {"algorithm": "broken", "params": {}, "accuracy": 0.0, "nfe_per_token": None},  # every request failed
    ]
    path = tmp_path / "plot.png"
    assert plot_accuracy_vs_nfe(results, path) == 2
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
