"""Helpers shared by the scenarios: progress phases, ledger checks, ratios."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from rich.progress import Progress, TaskID

from rentahal.bench.procs import Child

ProgressCallback = Callable[[float], None]


class Phases:
    """One progress bar per phase of a scenario (or nothing when ``progress`` is None)."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self._current: TaskID | None = None

    def start(self, description: str) -> ProgressCallback:
        """Begin a phase; the callback takes the fraction done (0 to 1)."""
        self.done()
        progress = self.progress
        if progress is None:
            return lambda _fraction: None
        task = progress.add_task(description, total=1.0)
        self._current = task
        return lambda fraction: progress.update(task, completed=fraction)

    def done(self) -> None:
        """Mark the current phase finished."""
        if self.progress is not None and self._current is not None:
            self.progress.update(self._current, completed=1.0)
        self._current = None


def ws_url(broker: Child) -> str:
    """The broker's WebSocket URL."""
    return f"ws://{broker.address}/ws"


def ledger_rows(db_path: Path) -> int:
    """Completed (charged) rows in the ``queries`` table of a finished run.

    Failed and cancelled queries are recorded too, uncharged; a client that got
    an error did not get an answer, so only ``done`` rows match answers.
    """
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        row = conn.execute("SELECT COUNT(*) FROM queries WHERE status = 'done'").fetchone()
        return int(row[0])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    """A figure for the targets table."""
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"
