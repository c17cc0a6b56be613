"""Progress lines for long steps, at most one per interval, so the run's log stays short."""

import logging
import time
from typing import Any


class Progress:
    """Writes an INFO line when at least ``every_sec`` seconds passed since the last one.

    The first call only starts the clock: a step that ends within the interval logs nothing
    but its summary.
    """

    def __init__(self, log: logging.Logger, every_sec: float) -> None:
        self.log = log
        self.every_sec = every_sec
        self._last = time.monotonic()

    def report(self, message: str, *args: Any) -> None:
        """Log ``message % args`` if the interval has passed."""
        now = time.monotonic()
        if now - self._last >= self.every_sec:
            self._last = now
            self.log.info(message, *args)
