"""Short write transactions on a SQLite file, on the loop's thread or one hand-off away.

The async driver (aiosqlite) runs every statement in its thread: each
cursor, execute, fetch and commit is a thread hand-off, and under load each
waits for the GIL; through the async engine, every statement also pays
SQLAlchemy's full execution path. A ledger batch is a fraction of a
millisecond of CPU, so :class:`DirectSQLite` runs it on a sync pysqlite
connection of the same file (same pragmas): on the loop itself
(:meth:`DirectSQLite.run`), or as one call on a thread
(:meth:`DirectSQLite.run_in_thread`, for batches under load, so the loop
goes on while SQLite works). A lock keeps the two from sharing the
connection at once: a write on the loop that finds a thread's write running
does not wait, it raises :class:`Locked`. A short busy timeout keeps a write
from waiting long for another connection's write lock (the caller then uses
the async engine). Its connections do not checkpoint on commit (a
checkpoint writes and fsyncs the database file): every
``CHECKPOINT_EVERY`` commits a passive checkpoint runs in a thread instead.
Writes use one persistent connection (no pool checkout per transaction),
which carries a :class:`~rentahal.storage.lean.Runner`: the ledger's
:class:`~rentahal.storage.lean.Prepared` statements run on its sqlite3
connection, compiled once, without SQLAlchemy's per-statement machinery.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from rentahal.storage.lean import RUNNER_KEY, Runner

logger = logging.getLogger(__name__)

# How long a write waits for another connection's write lock before it gives up here.
BUSY_TIMEOUT_MS = 10
CHECKPOINT_EVERY = 200  # commits between two background checkpoints

T = TypeVar("T")


class Locked(Exception):
    """Another connection held the write lock for ``BUSY_TIMEOUT_MS``; nothing was written."""


def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # a read-only file: writes fail with a clear error later
        logger.debug("could not set SQLite pragmas (read-only database?)")
    finally:
        cursor.close()


def sqlite_file_writer(url: URL) -> DirectSQLite | None:
    """A :class:`DirectSQLite` for a SQLite file URL; ``None`` for anything else."""
    database = str(url.database or "")
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if url.query.get("mode") == "memory" or "mode=memory" in database:
        return None
    return DirectSQLite(url.set(drivername="sqlite+pysqlite"))


class DirectSQLite:
    """A sync engine on a SQLite file for short writes on the loop (see the module doc)."""

    def __init__(self, url: URL) -> None:
        self.engine: Engine = create_engine(
            url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        event.listen(self.engine, "connect", _set_pragmas)
        self.commits = 0
        self.locked = 0  # writes that found the lock taken (and went elsewhere)
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._conn: Connection | None = None  # the writes' connection, opened on first use
        self.runner = Runner(self.engine.dialect)  # the lean statements of its transactions
        self._lock = threading.Lock()

    async def run_in_thread(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` as :meth:`run`, on a thread; the loop goes on meanwhile.

        Waits for a write of the loop or of another thread to end first. A
        cancel does not stop the thread: its transaction still commits.
        """
        answer = await asyncio.to_thread(self._run_locked, fn, True)
        self._after_commit()
        return answer

    def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn`` in one transaction, committed, on the calling (the loop's) thread.

        Raises :class:`Locked` when another connection kept the write lock, or
        a thread's write (:meth:`run_in_thread`) holds this one.
        """
        answer = self._run_locked(fn, False)
        self._after_commit()
        return answer

    def _run_locked(self, fn: Callable[[Connection], T], wait: bool) -> T:
        if not self._lock.acquire(blocking=wait):
            self.locked += 1
            raise Locked("a write of this connection runs on a thread")  # only the loop's
        try:
            return self._run(fn)
        finally:
            self._lock.release()

    def _run(self, fn: Callable[[Connection], T]) -> T:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self.engine.connect()
        try:
            with conn.begin():
                info = conn.info
                if RUNNER_KEY not in info:  # a new DBAPI connection (first, or reconnected)
                    info[RUNNER_KEY] = self.runner
                self.runner.raw = conn.connection.dbapi_connection  # type: ignore[assignment]
                answer = fn(conn)
        except OperationalError as exc:
            if "locked" not in str(exc.orig) and "busy" not in str(exc.orig):
                self._reset()
                raise
            self.locked += 1
            raise Locked(str(exc.orig)) from exc
        except IntegrityError:
            raise
        except DBAPIError:
            self._reset()  # the next write starts on a fresh connection
            raise
        finally:
            self.runner.raw = None
        return answer

    def _after_commit(self) -> None:
        self.commits += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._since_checkpoint = 0
            self._checkpoint = asyncio.get_running_loop().create_task(
                self._checkpoint_in_thread(), name="sqlite-checkpoint"
            )

    def _reset(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # it is dropped either way
                logger.debug("closing the SQLite write connection failed", exc_info=True)

    async def _checkpoint_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self._checkpoint_now)
        except Exception as exc:  # the next one tries again; the WAL only grows meanwhile
            logger.warning("SQLite checkpoint failed: %s", exc)
        finally:
            self._checkpoint = None

    def _checkpoint_now(self) -> None:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        """Wait for a running checkpoint, then close the connections."""
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        await asyncio.to_thread(self._lock.acquire)  # a thread's write ends first
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.engine.dispose()
        finally:
            self._lock.release()
