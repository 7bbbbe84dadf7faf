"""The ``Storage`` interface over one SQLAlchemy async engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rentahal.errors import StorageError
from rentahal.models import AIWorker, HuggingFaceModel, User
from rentahal.nicknames import RESERVED_PREFIX
from rentahal.storage import tables as t
from rentahal.storage.direct import DirectSQLite, Locked, sqlite_file_writer

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MIGRATE_LOCK = 0x52454E54  # "RENT": the advisory lock key of schema migrations
FIRST_USER_LOCK = 0x52454E55  # the advisory lock key of user creation (first-user rule)
T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
    except Exception:  # a read-only file cannot switch to WAL; reads still work
        logger.warning("could not set SQLite pragmas (read-only database?)")
    finally:
        cursor.close()


def _row_dict(row: Any) -> dict[str, Any]:
    """A row as a plain JSON-ready dict (str keys, ISO times)."""
    return {
        str(k): v.isoformat() if isinstance(v, datetime) else v for k, v in row._mapping.items()
    }


def _worker_from_row(row: Any) -> AIWorker:
    models = json.loads(row.models) if row.models else []
    return AIWorker(
        name=row.name,
        address=row.address,
        type=row.type if row.type in ("chat", "vision", "imagine", "speech") else "chat",
        health_score=row.health_score if row.health_score is not None else 100.0,
        is_blacklisted=bool(row.is_blacklisted),
        last_active=row.last_active or "",
        protocol=row.protocol or "",
        max_concurrency=row.max_concurrency or 1,
        api_key=row.api_key,
        models=models,
        realm=row.realm,
    )


def user_from_row(row: Any) -> User:
    """A ``users`` row as a :class:`User`."""
    return User(
        guid=row.guid,
        nickname=row.nickname or "",
        is_sysop=bool(row.is_sysop),
        total_query_time=float(row.total_query_time or 0.0),
        total_cost=float(row.total_cost or 0.0),
        is_banned=bool(row.is_banned),
        query_count=int(row.query_count or 0),
    )


class Storage:
    """Users, queries, workers and totals in one database.

    ``for_user(guid)`` is the sharding seam: here it answers ``self``;
    :class:`~rentahal.storage.shards.ShardedStorage` answers the storage of
    the shard that holds that user's data.
    """

    direct: DirectSQLite | None = None  # a SQLite file's writes on the loop (:meth:`write`)

    def __init__(
        self, url: str, *, echo: bool = False, connect_timeout_s: float | None = None
    ) -> None:
        self.url = url
        self._owns_engine = True
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
            if connect_timeout_s is not None:
                kwargs["connect_args"] = {"timeout": connect_timeout_s}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            self.direct = sqlite_file_writer(self.engine.url)

    @classmethod
    def sharing(cls, other: Storage) -> Storage:
        """A plain storage on ``other``'s engine (``other`` closes it)."""
        view = cls.__new__(cls)
        view.url = other.url
        view.engine = other.engine
        view.direct = other.direct
        view._owns_engine = False
        return view

    def for_user(self, guid: str) -> Storage:
        """The storage holding ``guid``'s rows."""
        return self

    def check_available(self, guid: str) -> None:
        """Raise ``ShardUnavailable`` when ``guid``'s shard is known to be down (never here)."""

    def directory_changed(self) -> None:
        """Another process changed the shard directory (nothing to do unsharded)."""

    async def close(self) -> None:
        """Dispose of the engine's connections."""
        if self._owns_engine:
            await self.engine.dispose()
            if self.direct is not None:
                await self.direct.close()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction; database errors become ``StorageError``."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except (OperationalError, DBAPIError) as exc:
            raise StorageError(f"database error: {exc.orig}") from exc

    async def write(self, fn: Callable[[Connection], T], *, inline: bool = True) -> T:
        """Run ``fn`` in one transaction and commit; its answer once committed.

        On a SQLite file, ``fn`` runs on a plain connection
        (:mod:`rentahal.storage.direct`): on the event loop's thread when
        ``inline``, else as one call on a thread. When another connection
        holds the write lock, it runs again on the async engine, which waits
        as every write does. Otherwise (PostgreSQL, in-memory) it is
        ``run_sync`` in :meth:`begin`. ``fn`` may run twice: it must
        have no effect outside the transaction. Errors as :meth:`begin`.
        """
        if self.direct is not None:
            try:
                if inline:
                    return self.direct.run(fn)
                return await self.direct.run_in_thread(fn)
            except Locked:
                logger.debug("SQLite write lock taken; the write goes to the async engine")
            except IntegrityError:
                raise
            except DBAPIError as exc:
                raise StorageError(f"database error: {exc.orig}") from exc
        async with self.begin() as conn:
            return await conn.run_sync(fn)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent).

        A database already at the newest revision is only read, so a read-only
        file can still be served.
        """
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        head = ScriptDirectory.from_config(cfg).get_current_head()

        def _upgrade(conn: Connection) -> None:
            if MigrationContext.configure(conn).get_current_revision() == head:
                return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Nodes starting together migrate one after another.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK}
                )
            await conn.run_sync(_upgrade)
            totals = await conn.execute(select(t.system_stats.c.id).where(t.system_stats.c.id == 1))
            if totals.first() is None:
                await conn.execute(
                    insert(t.system_stats).values(
                        id=1,
                        total_queries=0,
                        total_processing_time=0.0,
                        total_cost=0.0,
                        last_updated=_utcnow(),
                    )
                )

    def _sqlite_file(self) -> Path | None:
        """The SQLite database file, or ``None`` (PostgreSQL, in-memory SQLite)."""
        url = self.engine.url
        if not url.get_backend_name() == "sqlite" or url.database in (None, "", ":memory:"):
            return None
        database = str(url.database)
        if url.query.get("uri") == "true" and database.startswith("file:"):
            database = database.removeprefix("file:")
        return Path(database)

    async def reachable(self, timeout_s: float = 2.0) -> bool:
        """True when the database answers a cheap query within ``timeout_s``.

        A SQLite file must also still exist: open connections keep reading a
        deleted file, but the broker would not find it again after a restart.
        """
        sqlite_file = self._sqlite_file()
        if sqlite_file is not None and not await asyncio.to_thread(sqlite_file.exists):
            return False
        try:
            async with asyncio.timeout(timeout_s), self.begin() as conn:
                await conn.execute(select(t.system_stats.c.id).limit(1))
        except (StorageError, TimeoutError, OSError) as exc:
            logger.warning("database check failed: %s", exc)
            return False
        return True

    async def get_user(self, guid: str) -> User | None:
        """The user with ``guid``, or ``None``."""
        async with self.begin() as conn:
            row = (await conn.execute(select(t.users).where(t.users.c.guid == guid))).first()
        return user_from_row(row) if row else None

    async def get_or_create_user(self, guid: str, *, new: bool = False) -> User:
        """The user with ``guid``; created (sysop if the very first) when unknown.

        ``new``: the GUID was just made, so it is not looked up first (a clash still
        ends in the stored user).
        """
        user = None if new else await self.get_user(guid)
        if user is not None:
            return user
        try:
            return await self._create_user(guid, f"user_{guid[:8]}")
        except IntegrityError:
            # A concurrent connect created it, or the nickname prefix is taken.
            user = await self.get_user(guid)
            if user is not None:
                return user
            return await self._create_user(guid, f"user_{guid.replace('-', '')[:16]}")

    async def _create_user(self, guid: str, nickname: str) -> User:
        """Insert a user; it becomes sysop only if no other user exists when it commits.

        The rule is atomic: on SQLite the INSERT comes first, so the transaction
        holds the database's write lock while it counts; on PostgreSQL a
        transaction-scoped advisory lock makes concurrent creations take turns,
        and each count (READ COMMITTED) sees the users committed before it.
        """
        async with self.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": FIRST_USER_LOCK}
                )
            new = User(guid=guid, nickname=nickname, is_sysop=False)
            await conn.execute(insert(t.users).values(**new.model_dump()))
            # Other installations' accounts (reserved nicknames) are not people.
            # Two rows answer "is it alone?"; a count of all users grew with each one.
            people = (
                select(t.users.c.guid)
                .where(t.users.c.nickname.not_like(f"{RESERVED_PREFIX}%"))
                .limit(2)
                .subquery()
            )
            count = (await conn.execute(select(func.count()).select_from(people))).scalar()
            if count == 1:
                await conn.execute(
                    update(t.users).where(t.users.c.guid == guid).values(is_sysop=True)
                )
                new = new.model_copy(update={"is_sysop": True})
        return new

    async def set_nickname(self, guid: str, nickname: str) -> bool:
        """Rename a user; ``False`` when the nickname is taken."""
        try:
            async with self.begin() as conn:
                await conn.execute(
                    update(t.users).where(t.users.c.guid == guid).values(nickname=nickname)
                )
        except IntegrityError:
            return False
        return True

    async def set_banned(self, guid: str, banned: bool) -> bool:
        """Ban or unban; ``False`` when no such user exists."""
        async with self.begin() as conn:
            result = await conn.execute(
                update(t.users).where(t.users.c.guid == guid).values(is_banned=banned)
            )
        return result.rowcount > 0

    async def set_sysop(self, guid: str, is_sysop: bool) -> bool:
        """Grant or revoke sysop rights (CLI and admin use only)."""
        async with self.begin() as conn:
            result = await conn.execute(
                update(t.users).where(t.users.c.guid == guid).values(is_sysop=is_sysop)
            )
        return result.rowcount > 0

    async def list_users(self) -> list[User]:
        """Every user, by nickname."""
        async with self.begin() as conn:
            rows = (await conn.execute(select(t.users).order_by(t.users.c.nickname))).all()
        return [user_from_row(r) for r in rows]

    async def users_by_guid(self, guids: list[str]) -> list[User]:
        """The users among ``guids`` that exist."""
        if not guids:
            return []
        async with self.begin() as conn:
            rows = (await conn.execute(select(t.users).where(t.users.c.guid.in_(guids)))).all()
        return [user_from_row(r) for r in rows]

    async def recent_queries(self, guid: str, limit: int = 10) -> list[dict[str, Any]]:
        """The user's newest query rows, newest first, all columns."""
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    select(t.queries)
                    .where(t.queries.c.user_guid == guid)
                    .order_by(t.queries.c.id.desc())
                    .limit(limit)
                )
            ).all()
        return [_row_dict(row) for row in rows]

    async def average_times(self) -> dict[str, float]:
        """Average processing time of completed queries per query type."""
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    select(t.queries.c.query_type, func.avg(t.queries.c.processing_time))
                    .where(t.queries.c.status.is_(None) | (t.queries.c.status == "done"))
                    .group_by(t.queries.c.query_type)
                )
            ).all()
        return {str(r[0]): float(r[1] or 0.0) for r in rows}

    async def system_stats(self) -> dict[str, Any]:
        """The running totals row."""
        async with self.begin() as conn:
            row = (
                await conn.execute(select(t.system_stats).where(t.system_stats.c.id == 1))
            ).first()
        if row is None:
            return {"total_queries": 0, "total_processing_time": 0.0, "total_cost": 0.0}
        return _row_dict(row)

    async def list_workers(self) -> list[AIWorker]:
        """Every persisted worker."""
        async with self.begin() as conn:
            rows = (await conn.execute(select(t.ai_workers).order_by(t.ai_workers.c.id))).all()
        return [_worker_from_row(r) for r in rows]

    async def save_worker(self, worker: AIWorker) -> None:
        """Insert or replace the worker of that name."""
        values = worker.model_dump()
        values["models"] = json.dumps(worker.models)
        async with self.begin() as conn:
            await conn.execute(delete(t.ai_workers).where(t.ai_workers.c.name == worker.name))
            await conn.execute(insert(t.ai_workers).values(**values))

    async def delete_worker(self, name: str) -> bool:
        """Remove a worker; ``False`` when none had that name."""
        async with self.begin() as conn:
            result = await conn.execute(delete(t.ai_workers).where(t.ai_workers.c.name == name))
        return result.rowcount > 0

    async def save_health(self, workers: list[AIWorker]) -> None:
        """Persist health, blacklist and last-active of several workers at once."""
        if not workers:
            return
        async with self.begin() as conn:
            for w in workers:
                await conn.execute(
                    update(t.ai_workers)
                    .where(t.ai_workers.c.name == w.name)
                    .values(
                        health_score=w.health_score,
                        is_blacklisted=w.is_blacklisted,
                        last_active=w.last_active,
                        models=json.dumps(w.models),
                    )
                )

    async def list_hf_models(self) -> list[HuggingFaceModel]:
        """Hugging Face models the sysop made available."""
        async with self.begin() as conn:
            rows = (await conn.execute(select(t.huggingface_models))).all()
        return [HuggingFaceModel(name=r.name, type=r.type or "chat") for r in rows]

    async def add_hf_model(self, model: HuggingFaceModel) -> None:
        """Add (or replace) a Hugging Face model."""
        async with self.begin() as conn:
            await conn.execute(
                delete(t.huggingface_models).where(t.huggingface_models.c.name == model.name)
            )
            await conn.execute(insert(t.huggingface_models).values(**model.model_dump()))

    async def remove_hf_model(self, name: str) -> bool:
        """Remove a Hugging Face model by name."""
        async with self.begin() as conn:
            result = await conn.execute(
                delete(t.huggingface_models).where(t.huggingface_models.c.name == name)
            )
        return result.rowcount > 0
