"""A progress bar on stderr for long pass work (calibration batches, sensitivity runs, greedy drop steps).

Small on purpose: passes report progress only for work that can take minutes, and a
log file (not a terminal) gets a few lines instead of a redrawn bar.
"""

from __future__ import annotations

import sys
import time


class ProgressBar:
    """`label [#####-----] i/n  t s` on stderr: redrawn in place on a terminal, a few lines otherwise."""

    WIDTH = 24

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream=None) -> None:
        self.label, self.total, self.enabled = label, total, enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self.done = 0
        self._last_line = -1

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        filled = self.WIDTH * self.done // self.total
        text = (f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {self.done}/{self.total} "
                f"{time.perf_counter() - self.started:.1f}s")
        if tty:
            self.stream.write("\r" + text + ("\n" if self.done == self.total else ""))
        else:  # a log file: about every quarter, and the end
            quarter = 4 * self.done // self.total
            if quarter == self._last_line and self.done != self.total:
                return
            self._last_line = quarter
            self.stream.write(text + "\n")
        self.stream.flush()
