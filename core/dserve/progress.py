"""Progress of long server-side work (model download, loading weight shards, `dserve.LLM`
batches): a tqdm bar on a terminal, log lines elsewhere.

A log file, a container's output or a systemd journal has no use for a bar redrawn with
carriage returns, so there this logs one structured line each time another tenth of the total is
done (at most one a second) and one at the end. It subclasses tqdm (which huggingface_hub and
transformers already bring) so that `huggingface_hub.snapshot_download(tqdm_class=...)` drives it.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import structlog
from tqdm.auto import tqdm

log = structlog.get_logger("dserve.progress")

MIN_LINE_INTERVAL_S = 1.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


class ProgressBar(tqdm):
    """tqdm on a terminal; otherwise `progress` log lines at each tenth (kwargs as tqdm's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)  # huggingface_hub's own tqdm takes a name; plain tqdm refuses it
        self._as_lines = not on_terminal() and not kwargs.get("disable")
        if self._as_lines:
            kwargs["file"] = io.StringIO()  # tqdm keeps counting; nothing is drawn
        super().__init__(*args, **kwargs)
        self._next_tenth = 1
        self._last_line = 0.0
        self._ended = False

    def __iter__(self):
        if not self._as_lines:  # tqdm's own loop (it counts without calling update)
            yield from super().__iter__()
            return
        for item in self.iterable:
            yield item
            self.update(1)  # after the caller's work on the item
        self.close()

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self._as_lines:
            self._maybe_log()
        return shown

    def close(self) -> None:
        if self._as_lines and not self._ended and self.n:
            self._ended = True
            self._log_line()
        super().close()

    def _maybe_log(self) -> None:
        total = self.total or 0
        if total <= 0:
            return
        now = time.monotonic()
        if self.n >= total or (self.n * 10 >= self._next_tenth * total and now - self._last_line >= MIN_LINE_INTERVAL_S):
            self._next_tenth = int(self.n * 10 // total) + 1
            if self.n >= total:
                self._ended = True
            self._log_line()
            self._last_line = now

    def _log_line(self) -> None:
        total = self.total or 0
        fields: dict[str, Any] = {"done": _amount(self.n, self.unit), "elapsed_s": round(self.format_dict["elapsed"], 1)}
        if total:
            fields["total"] = _amount(total, self.unit)
            fields["percent"] = int(100 * self.n // total)
        log.info(self.desc.rstrip(": ") or "progress", **fields)


def _amount(value: float, unit: str) -> str | int:
    if unit == "B":
        return f"{value / 2**20:.1f} MiB"
    return int(value)
