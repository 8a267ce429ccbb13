"""Progress for long stages: a live bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("virnucpro")

LOG_EVERY_SECONDS = 10.0


class StageProgress:
    """Counts work done in a stage: ``with StageProgress("ESM-2", total, "frames") as p:
    p.advance(n)``. Quiet when ``enabled`` is False."""

    def __init__(self, stage: str, total: int, unit: str, enabled: bool = True) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self._live = enabled and sys.stderr.isatty()
        self._log = enabled and not self._live
        self._bar: Progress | None = None
        self._started = self._last_log = time.monotonic()

    def __enter__(self) -> StageProgress:
        if self._live:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.stage, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self._log and time.monotonic() - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = time.monotonic()
            rate = self.done / max(self._last_log - self._started, 1e-9)
            log.info("%s: %d/%d %s (%.0f/s)", self.stage, self.done, self.total, self.unit, rate)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
