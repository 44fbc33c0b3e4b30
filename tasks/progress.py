"""Progress of long steps on stderr: Rich bars when stderr is a terminal, throttled plain log
lines otherwise (a CI log, ``2>file``); never anything on stdout (it is --json's).

A step wraps its loop in `progress`, which yields a `Reporter`: a plain callable
``on_step(done, total, **sub_counts)`` that the estimators of `tasks.compute` take as their
optional progress callback (they call it between kernel calls, never inside one). The
sub-counts (e.g. ``iteration=12``) show next to the count.

* Terminal: one Rich `Progress` per process, shared by every step open at once (Prefect runs
  tasks in threads; Rich allows one live display at a time), started with the first step and
  stopped with the last. While it is live, what is written to ``sys.stderr`` (our log
  handler writes to the current ``sys.stderr``) prints above the bars.
* Otherwise: log records on the ``tasks.progress`` logger (Prefect forwards the ``tasks``
  loggers to its run logs): the first step, then a line whenever the count crosses the next
  of about `LINES` milestones (at least `MIN_GAP_S` after the last line, so a step of a
  second logs its start and end only) or `HEARTBEAT_S` passed since the last line, and the
  last step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

logger = logging.getLogger(__name__)

#: Plain mode: about this many lines per step at most (a line per k of an 11-k sweep, one
#: per two of 20 bootstrap refits), besides the heartbeat.
LINES = 12
#: Plain mode: a slow step still gets a line this often (when its count moved).
HEARTBEAT_S = 30.0
#: Plain mode: no milestone line sooner than this after the previous line.
MIN_GAP_S = 2.0

OnStep = Callable[..., None]


def _stderr() -> TextIO:
    # Rich's redirection replaces sys.stderr with a proxy while bars are live.
    return getattr(sys.stderr, "rich_proxied_file", sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _detail(sub_counts: dict[str, Any]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in sub_counts.items())


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


def _shown() -> None:
    if logger.level == logging.NOTSET:
        # Prefect's logging set-up (when it is imported) puts the root logger at WARNING:
        # these INFO lines are the point of this logger, whoever configured the root.
        logger.setLevel(logging.INFO)


def announce(message: str) -> None:
    """One line about where to watch the work (e.g. the Dask dashboard's URL), on the
    progress logger, so it shows wherever the progress lines show."""
    _shown()
    # about the process, not a Prefect run: not for the run logs (it may come before any run)
    logger.info("%s", message, extra={"send_to_api": False})


class Reporter:
    """The callback of one step. ``reporter(done, total=None, **sub_counts)``: ``done`` of
    ``total`` (unchanged when None) done so far; safe to call from any thread."""

    def __init__(self, description: str, total: int, unit: str, clock=time.monotonic) -> None:
        self.description = description
        self.total = max(int(total), 0)
        self.unit = unit
        self.done = 0
        self.sub_counts: dict[str, Any] = {}
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int | None = None, **sub_counts: Any) -> None:
        with self._lock:
            if total is not None:
                self.total = max(int(total), 0)
            self.done = max(0, int(done))
            self.sub_counts = sub_counts
            self._show()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first step or once done."""
        if self.done <= 0 or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def finish(self, completed: bool) -> None:
        """The step ended: a completed step that stopped early (converged) counts as whole."""
        with self._lock:
            if completed and self.done < self.total:
                self.total = self.done
            self._close(completed)

    def _show(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _close(self, completed: bool) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class LineReporter(Reporter):
    """Plain lines on the ``tasks.progress`` logger, throttled (see the module docstring)."""

    def __init__(self, description: str, total: int, unit: str, clock=time.monotonic) -> None:
        super().__init__(description, total, unit, clock)
        _shown()
        self._last_line: float | None = None
        self._next_milestone = 0
        self._logged_done = -1

    def line(self) -> str:
        text = f"{self.description}: {self.done}/{self.total} {self.unit}"
        detail = _detail(self.sub_counts)
        if detail:
            text += f" ({detail})"
        text += f", {_seconds(self.elapsed)}"
        eta = self.eta()
        if eta is not None:
            text += f", about {_seconds(eta)} left"
        return text

    def _show(self) -> None:
        now = self._clock()
        due = (
            self._last_line is None
            or (self.done >= self._next_milestone and now - self._last_line >= MIN_GAP_S)
            or (now - self._last_line >= HEARTBEAT_S and self.done != self._logged_done)
        )
        if due and self.done < self.total:
            self._emit(now)

    def _emit(self, now: float) -> None:
        logger.info("%s", self.line())
        self._last_line = now
        self._logged_done = self.done
        step = max(1, math.ceil(self.total / LINES))
        self._next_milestone = (self.done // step + 1) * step

    def _close(self, completed: bool) -> None:
        if completed:
            self._emit(self._clock())
        elif self._logged_done != self.done:
            logger.info("%s (stopped)", self.line())


class _SharedBars:
    """The process's one Rich `Progress`, live while any `BarReporter` is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: Any = None
        self._users = 0

    def add(self, reporter: BarReporter, stream: TextIO) -> tuple[Any, Any]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with self._lock:
            if self._progress is None:
                self._progress = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"),
                    TimeElapsedColumn(),
                    TextColumn("eta"),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[detail]}"),
                    console=Console(file=stream),
                    redirect_stdout=False,  # stdout stays the command's (--json)
                    redirect_stderr=True,  # log lines print above the bars
                )
                self._progress.start()
            self._users += 1
            task = self._progress.add_task(
                reporter.description, total=reporter.total, unit=reporter.unit, detail=""
            )
            return self._progress, task

    def remove(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._progress is not None:
                self._progress.stop()
                self._progress = None


_BARS = _SharedBars()


class BarReporter(Reporter):
    """A task of the shared Rich bars."""

    def __init__(
        self, description: str, total: int, unit: str, stream: TextIO, clock=time.monotonic
    ) -> None:
        super().__init__(description, total, unit, clock)
        self._progress, self._task = _BARS.add(self, stream)

    def _show(self) -> None:
        self._progress.update(
            self._task,
            completed=self.done,
            total=self.total,
            detail=_detail(self.sub_counts),
        )

    def _close(self, completed: bool) -> None:
        self._show()
        self._progress.stop_task(self._task)
        _BARS.remove()


class _Silent(Reporter):
    def _show(self) -> None:
        pass

    def _close(self, completed: bool) -> None:
        pass


_silenced = 0
_silenced_lock = threading.Lock()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No progress from any step while inside (a caller that fits thousands of small
    models, e.g. a benchmark, reports its own)."""
    global _silenced
    with _silenced_lock:
        _silenced += 1
    try:
        yield
    finally:
        with _silenced_lock:
            _silenced -= 1


@contextlib.contextmanager
def progress(
    description: str, total: int, unit: str = "steps", stream: TextIO | None = None
) -> Iterator[Reporter]:
    """A `Reporter` for one step of ``total`` units: bars when ``stream`` (default: the
    current stderr) is a terminal, plain lines otherwise, nothing when `silenced`. On leaving
    without an error the step counts as complete (a step that converged early ends at its
    own count)."""
    stream = _stderr() if stream is None else stream
    if _silenced:
        reporter: Reporter = _Silent(description, total, unit)
    elif _is_terminal(stream):
        reporter = BarReporter(description, total, unit, stream)
    else:
        reporter = LineReporter(description, total, unit)
    completed = False
    try:
        reporter(0)
        yield reporter
        completed = True
    finally:
        reporter.finish(completed)
