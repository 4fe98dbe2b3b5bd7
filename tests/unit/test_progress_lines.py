"""dserve.progress off a terminal: log lines at each tenth and at the end, not a redrawn bar."""

from __future__ import annotations

import structlog

from dserve import progress
from dserve.progress import ProgressBar


def test_lines_at_tenths_and_the_end(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    monkeypatch.setattr(progress, "MIN_LINE_INTERVAL_S", 0.0)
    with structlog.testing.capture_logs() as logs:
        bar = ProgressBar(total=100 * 2**20, desc="Downloading bytes", unit="B")
        for _ in range(100):
            bar.update(2**20)
        bar.close()
        for _ in ProgressBar(range(3), desc="Loading weight shards", unit="shard", total=3):
            pass
    download = [e for e in logs if e["event"] == "Downloading bytes"]
    assert [e["percent"] for e in download] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert download[-1]["done"] == download[-1]["total"] == "100.0 MiB"
    shards = [e for e in logs if e["event"] == "Loading weight shards"]
    assert [e["done"] for e in shards] == [1, 2, 3] and shards[-1]["percent"] == 100


def test_on_a_terminal_it_is_tqdm_and_logs_nothing(monkeypatch):
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    with structlog.testing.capture_logs() as logs:
        bar = ProgressBar(total=10, desc="x", file=open("/dev/null", "w"))
        bar.update(10)
        bar.close()
    assert logs == []
