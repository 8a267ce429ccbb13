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


def _live_bar(unit: str) -> Progress:
    """A started rich display: description, bar, done/total, unit, elapsed, ETA."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )
    bar.start()
    return bar


class StageProgress:
    """Counts work done in a stage: ``with StageProgress("ESM-2", total, "frames") as p:
    p.advance(n)``; ``total`` None when not known up front. Quiet when ``enabled`` is False."""

    def __init__(self, stage: str, total: int | None, unit: str, enabled: bool = True) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self._live = enabled and sys.stderr.isatty()
        self._log = enabled and not self._live
        self._bar: Progress | None = None
        self._started = self._last_log = time.monotonic()

    def __enter__(self) -> StageProgress:
        if self._live:
            self._bar = _live_bar(self.unit)
            self._task = self._bar.add_task(self.stage, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self._log and time.monotonic() - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = time.monotonic()
            rate = self.done / max(self._last_log - self._started, 1e-9)
            done = f"{self.done}" if self.total is None else f"{self.done}/{self.total}"
            log.info("%s: %s %s (%.0f/s)", self.stage, done, self.unit, rate)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


class WorkerProgress:
    """predict's progress: all shards (with ETA) and, per worker, shards and sequences done
    with their rate; a live display on a terminal, a log line every few seconds otherwise."""

    def __init__(self, total_shards: int, enabled: bool = True) -> None:
        self.total = total_shards
        self.done = 0
        self.workers: dict[str, dict] = {}  # name -> device, shards, sequences
        self._live = enabled and sys.stderr.isatty()
        self._log = enabled and not self._live
        self._bar: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._started = self._last_log = time.monotonic()

    def __enter__(self) -> WorkerProgress:
        if self._live:
            self._bar = _live_bar("shards {task.fields[detail]}")
            self._tasks["all"] = self._bar.add_task("all workers", total=self.total, detail="")
        return self

    def shard_done(self, worker: str, device: str, sequences: int) -> None:
        self.done += 1
        state = self.workers.setdefault(worker, {"device": device, "shards": 0, "sequences": 0,
                                                  "since": self._started})  # fmt: skip
        state["shards"] += 1
        state["sequences"] += sequences
        rate = state["sequences"] / max(time.monotonic() - state["since"], 1e-9)
        if self._bar is not None:
            if worker not in self._tasks:
                self._tasks[worker] = self._bar.add_task(f"{worker} {device}", total=None,
                                                         detail="")  # fmt: skip
            self._bar.update(self._tasks[worker], completed=state["shards"],
                             detail=f"{state['sequences']:,} sequences, {rate:,.0f}/s")  # fmt: skip
            self._bar.update(self._tasks["all"], completed=self.done)
        elif self._log and (time.monotonic() - self._last_log >= LOG_EVERY_SECONDS
                            or self.done == self.total):  # fmt: skip
            self._last_log = time.monotonic()
            per_worker = "; ".join(
                f"{name} {s['device']}: {s['shards']} shards, {s['sequences']} sequences"
                for name, s in sorted(self.workers.items())
            )
            log.info("shards %d/%d (%s)", self.done, self.total, per_worker)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
