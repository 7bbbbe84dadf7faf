"""The ledger spool: rows the database refused, kept on local disk until it is back.

An append-only JSON-lines file, one ledger row per line, ``fsync``-ed per
batch. Replay renames the file to ``<name>.replay`` (new rows go to a fresh
file meanwhile), writes the rows and deletes the replay file. A crash during
replay leaves the replay file, which the next replay takes first: rows are
idempotent per ``job_id``, so a row written twice is counted once.

Processes sharing a spool file (two unconfigured nodes in one directory) lock
it with ``flock``; an appender that finds its file renamed away opens the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rentahal.config import DatabaseSettings

logger = logging.getLogger(__name__)

SPOOL_NAME = "ledger-spool"
_TIME_FIELDS = ("timestamp",)


def spool_path(database: DatabaseSettings, node_id: str | None = None) -> Path:
    """Where a node's spool lives: ``[Database] spool_dir``, else beside the SQLite file.

    With a server database and no ``spool_dir`` it is the working directory.
    ``node_id`` (given for nodes of a cluster) goes into the file name, so
    nodes sharing a directory keep their own spools.
    """
    name = f"{SPOOL_NAME}-{node_id}.jsonl" if node_id else f"{SPOOL_NAME}.jsonl"
    if database.spool_dir:
        return Path(database.spool_dir) / name
    return _sqlite_dir(database) / name


def _sqlite_dir(database: DatabaseSettings) -> Path:
    if not database.database_url:
        return Path(database.database_name).parent
    try:
        url = make_url(database.url)
    except ArgumentError:
        return Path()
    if not url.drivername.startswith("sqlite") or not url.database:
        return Path()
    path = url.database.removeprefix("file:").split("?", 1)[0]
    return Path(path).parent if path and path != ":memory:" else Path()


def _encode(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row) + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    row: dict[str, Any] = orjson.loads(line)
    for key in _TIME_FIELDS:
        if isinstance(row.get(key), str):
            row[key] = datetime.fromisoformat(row[key])
    return row


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LedgerSpool:
    """The spool file of one node; every method is safe to call from the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replay_path = path.with_name(path.name + ".replay")
        self._lock = asyncio.Lock()

    def pending(self) -> bool:
        """Whether rows wait to be replayed."""
        return self.replay_path.exists() or (self.path.exists() and self.path.stat().st_size > 0)

    async def append(self, rows: list[dict[str, Any]]) -> None:
        """Add rows durably (written and ``fsync``-ed before this returns); ``OSError`` if not."""
        data = b"".join(_encode(row) for row in rows)
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:  # a replay renamed it away while we waited for the lock
                    continue
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path)
            return

    async def take(self) -> list[dict[str, Any]]:
        """The rows to replay (an earlier unfinished replay's first); call :meth:`done` after."""
        async with self._lock:
            return await asyncio.to_thread(self._take)

    def _take(self) -> list[dict[str, Any]]:
        if not self.replay_path.exists() and self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.replace(self.path, self.replay_path)
            finally:
                os.close(fd)
            _fsync_dir(self.path)
        if not self.replay_path.exists():
            return []
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(self.replay_path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(_decode(line))
            except (orjson.JSONDecodeError, TypeError, ValueError):
                # a write cut short by a crash: its caller never heard it was spooled
                logger.error("skipping unreadable line %d of %s", number, self.replay_path)
        return rows

    async def done(self) -> None:
        """The rows of the last :meth:`take` are in the database: forget them."""
        async with self._lock:
            await asyncio.to_thread(self._done)

    def _done(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.replay_path.unlink()
            _fsync_dir(self.replay_path)
