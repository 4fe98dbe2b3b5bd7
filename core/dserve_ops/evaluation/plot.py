"""`dserve eval --plot FILE.png`: accuracy against forward passes per generated token, one
point per evaluated algorithm (the quality/speed trade-off of decoding). Needs matplotlib
(`pip install 'dserve[plot]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label(result: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in (result.get("params") or {}).items())
    return f"{result['algorithm']} {params}".strip()


def plot_accuracy_vs_nfe(results: list[dict[str, Any]], path: Path, title: str = "") -> int:
    """Write the PNG; returns how many algorithms were plotted (those with an NFE count)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = [r for r in results if r.get("nfe_per_token") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in points:
        ax.scatter(r["nfe_per_token"], 100 * r["accuracy"], s=40)
        ax.annotate(_label(r), (r["nfe_per_token"], 100 * r["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("forward passes per generated token (NFE / token)")
    ax.set_ylabel("exact match (%)")
    ax.set_title(title or "accuracy against forward passes per token")
    ax.grid(True, alpha=0.3)
    if points:
        lo, hi = min(100 * r["accuracy"] for r in points), max(100 * r["accuracy"] for r in points)
        ax.set_ylim(max(0.0, lo - 5), min(100.0, hi + 5) if hi + 5 > lo - 5 else 100.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(points)
