"""Shared helpers for the reliability tests: servers, log lines, Prometheus text."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from e2e.conftest import MODEL_ARGS
from e2e.server import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "MODEL_ARGS",
    "ServerProcess",
    "fault_env",
    "json_log_lines",
    "wait_for",
    "scrape",
    "sample",
    "wait_idle",
    "model_info",
]


def json_log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's log file, parsed: one dict per JSON line (other lines skipped)."""
    out = []
    for line in server.logs().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; return its value or fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def scrape(url: str, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    """GET /metrics and return {(sample name, sorted label items): value}."""
    r = httpx.get(url + "/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples: dict, name: str, **labels: str) -> float:
    """One sample's value (0.0 if absent: a labelled counter not yet incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_idle(url: str, timeout: float = 15.0, headers: dict | None = None) -> dict:
    """Wait until /batch/stats shows nothing running and nothing queued; return the stats."""

    def idle():
        stats = httpx.get(url + "/batch/stats", headers=headers, timeout=5).json()
        return stats if stats["running_requests"] == 0 and stats["queue_depth"] == 0 else None

    return wait_for(idle, timeout, 0.1, "an idle scheduler (/batch/stats)")


def model_info(url: str, headers: dict | None = None) -> dict:
    return httpx.get(url + "/v1/models", headers=headers, timeout=10).json()["data"][0]


FAULTS_DIR = str(Path(__file__).parent / "faults")


def fault_env(fault: str, **extra: str) -> dict[str, str]:
    """Environment for a server (and its workers) whose runner `fault` names misbehaves
    (see tests/reliability/faults/sitecustomize.py): `"step_hangs:llada/reference"`."""
    path = os.pathsep.join(p for p in (FAULTS_DIR, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "DSERVE_TEST_FAULT": fault, **extra}
