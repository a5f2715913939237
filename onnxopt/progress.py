"""Progress of long steps (calibration, refits, least squares, block sensitivity, comparison).

On a terminal (stderr is a tty) a step shows a transient rich bar; otherwise it writes one line to
stderr when it ends (what, how many, how long), so a log of a CI run or a redirected session
still says where the time went. Disabled (``enabled=False``, the API's default), it shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger(__name__)


class Progress:
    """One step's progress: ``advance(n)`` as work is done, ``close()`` at the end (once)."""

    def __init__(self, description: str, total: int | None, *, enabled: bool = True, unit: str = "samples",
                 stream: TextIO | None = None) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream or sys.stderr
        self._start = time.perf_counter()
        self._bar = None
        self._enabled = enabled
        logger.info("%s: started (%s %s)", description, "?" if total is None else total, unit)
        if enabled and self._stream.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=True, console=Console(file=self._stream))
            self._task = self._bar.add_task(description, total=total)
            self._bar.start()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.stop()
        elif self._enabled:
            print(f"onnxopt: {self.description}: {self.done} {self.unit} in {seconds:.1f} s", file=self._stream,
                  flush=True)
        logger.info("%s: %d %s in %.1f s", self.description, self.done, self.unit, seconds)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
