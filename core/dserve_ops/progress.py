"""Progress of a client command (`dserve bench`, `dserve eval`) on standard error.

On a terminal: one bar redrawn in place. Otherwise (a log file, CI, a pipe): plain lines, one
each time another tenth of the work is done (at most one a second: a batch that finishes
together gives one line, not ten), at least every `every_s` seconds while work finishes, and one
at the end, so a log shows the run is alive without a line per request. Standard output is left to
the command's result (a table, or JSON with --json). Hand-written rather than tqdm so the core
keeps its dependency list, and so the non-terminal form is lines, not carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
REDRAW_S = 0.1
MIN_LINE_INTERVAL_S = 1.0


class Progress:
    def __init__(
        self,
        total: int,
        label: str,
        *,
        unit: str = "requests",
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.terminal = self.enabled and self.stream.isatty()
        self.every_s, self.clock = every_s, clock
        self.done = self.failed = 0
        self.started = self.last_output = clock()
        self.next_tenth = 1

    def update(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += not ok
        if not self.enabled:
            return
        now = self.clock()
        finished = self.done >= self.total
        if self.terminal:
            if finished or now - self.last_output >= REDRAW_S:
                self._write(f"\r{self._bar()} {self._counts(now)}" + ("\n" if finished else ""), now)
            return
        since_last = now - self.last_output
        crossed_tenth = self.done * 10 >= self.next_tenth * self.total and since_last >= MIN_LINE_INTERVAL_S
        if crossed_tenth or finished or since_last >= self.every_s:
            self.next_tenth = self.done * 10 // self.total + 1
            self._write(f"{self.label}: {self._counts(now)}\n", now)

    def _bar(self) -> str:
        filled = BAR_WIDTH * self.done // self.total
        return f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"

    def _counts(self, now: float) -> str:
        percent = 100 * self.done // self.total
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.done}/{self.total} {self.unit} ({percent}%){failed}, {now - self.started:.1f}s"

    def _write(self, text: str, now: float) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.last_output = now
