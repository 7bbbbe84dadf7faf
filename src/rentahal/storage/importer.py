"""``rentahal db import PATH``: an original ``llm_broker.db`` into the sharded layout.

The source is opened read-only. Each shard's users, queries and API keys go
in one transaction per shard (with the shard's counter and an outbox batch
named after the source file's hash and the shard), so a crash leaves each
shard either imported or untouched, and running the import again skips the
shards already done. Rows keep every column the source has; a row without a
job id gets ``orig-<file hash>-<source id>``. Workers and Hugging Face models
the main database does not have yet are added there. Afterwards every
imported user's query count, time and cost are recomputed from the rows in
its shard and compared with the source's rows; a difference is a problem.
The source's own stored totals (user rows, ``system_stats``) are compared
with its rows too and any disagreement is noted (the original's, not ours).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from rentahal.errors import StorageError
from rentahal.nicknames import RESERVED_PREFIX
from rentahal.storage import fences, totals
from rentahal.storage import tables as t
from rentahal.storage.prefixes import prefix_clause, prefix_of
from rentahal.storage.shards import ShardedStorage
from rentahal.storage.totals import Delta

logger = logging.getLogger(__name__)

CHUNK_ROWS = 500
Progress = Callable[[str, int, int], None]
_PerUser = dict[str, Delta]


class ImportFailed(StorageError):
    """The import stopped; shards already imported stay, the others are untouched."""


@dataclass(slots=True)
class ImportReport:
    """What was imported, and what the check found."""

    users: int = 0
    queries: int = 0
    keys: int = 0
    workers: int = 0
    models: int = 0
    per_shard: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    source_rows: Delta = field(default_factory=Delta)
    source_stats: Delta = field(default_factory=Delta)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _columns(table: Any, present: set[str]) -> list[Any]:
    return [c for c in table.c if c.name in present]


def _charged(row: dict[str, Any]) -> bool:
    return row.get("status") in (None, "done")


class Importer:
    """Imports one original database into a sharded installation (see the module doc)."""

    def __init__(
        self,
        storage: ShardedStorage,
        *,
        chunk_rows: int = CHUNK_ROWS,
        progress: Progress | None = None,
    ) -> None:
        self.storage = storage
        self.chunk_rows = chunk_rows
        self._progress = progress or (lambda step, done, total: None)

    async def run(self, path: Path) -> ImportReport:
        """Import ``path``; the report (``problems`` empty when every row arrived)."""
        storage = self.storage
        if storage.directory is None:
            raise ImportFailed(
                "the installation is not sharded: enable database_sharding in realms.yml "
                "(or add a shard with `rentahal db reshard --add`) first"
            )
        if not await asyncio.to_thread(path.is_file):
            raise ImportFailed(f"no database file at {path}")
        fingerprint = await asyncio.to_thread(_fingerprint, path)
        where = await asyncio.to_thread(path.resolve)
        source = create_async_engine(f"sqlite+aiosqlite:///file:{where}?mode=ro&uri=true")
        report = ImportReport()
        try:
            async with source.connect() as src:
                present = await self._schema(src)
                for table in ("users", "queries"):
                    if table not in present:
                        raise ImportFailed(
                            f"{path} has no {table} table: not a RENT-A-HAL database"
                        )
                await self._source_figures(src, present, report)
                has_status = "status" in present["queries"]
                expected = await self._per_user(src, None, has_status=has_status)
                for name in storage.directory.in_use():
                    await self._import_shard(src, present, name, fingerprint, report)
                await self._globals(src, present, report)
        finally:
            await source.dispose()
        await self._check(expected, report)
        return report

    @staticmethod
    async def _schema(src: AsyncConnection) -> dict[str, set[str]]:
        tables: list[str] = list(
            (await src.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))).scalars()
        )
        present: dict[str, set[str]] = {}
        for name in list(tables):
            columns = (await src.execute(text(f'PRAGMA table_info("{name}")'))).all()
            present[str(name)] = {str(c[1]) for c in columns}
        return present

    async def _source_figures(
        self, src: AsyncConnection, present: dict[str, set[str]], report: ImportReport
    ) -> None:
        per_user = await self._per_user(src, None, has_status="status" in present["queries"])
        report.source_rows = sum(per_user.values(), Delta())
        if "system_stats" in present:
            row = (
                await src.execute(
                    select(
                        func.sum(t.system_stats.c.total_queries).label("total_queries"),
                        func.sum(t.system_stats.c.total_processing_time).label(
                            "total_processing_time"
                        ),
                        func.sum(t.system_stats.c.total_cost).label("total_cost"),
                    )
                )
            ).one()
            report.source_stats = Delta.of_row(row)
            if not report.source_stats.close_to(report.source_rows):
                report.notes.append(
                    f"the source's system_stats ({report.source_stats}) differ from its query rows "
                    f"({report.source_rows}); the totals here are the rows'"
                )
        u = t.users.c
        users = (
            await src.execute(select(u.guid, u.query_count, u.total_query_time, u.total_cost))
        ).all()
        differ = [
            r.guid
            for r in users
            if not Delta(
                int(r.query_count or 0), float(r.total_query_time or 0), float(r.total_cost or 0)
            ).close_to(per_user.get(r.guid, Delta()))
        ]
        if differ:
            report.notes.append(
                f"{len(differ)} user(s) of the source have stored totals that differ from their "
                "query rows; the stored totals are kept as they were"
            )

    @staticmethod
    async def _per_user(
        conn: AsyncConnection, guids: list[str] | None, *, has_status: bool = True
    ) -> _PerUser:
        """Charged rows per user GUID (of ``guids`` only, when given).

        ``has_status``: the table has our ``status`` column (an original's has not:
        every row of it was charged).
        """
        q = t.queries.c
        query = select(
            q.user_guid,
            func.count().label("total_queries"),
            func.sum(q.processing_time).label("total_processing_time"),
            func.sum(q.cost).label("total_cost"),
        )
        if has_status:
            query = query.where(totals.charged_rows())
        if guids is not None:
            query = query.where(q.user_guid.in_(guids))
        query = query.group_by(q.user_guid)
        return {str(r.user_guid): Delta.of_row(r) for r in (await conn.execute(query)).all()}

    async def _import_shard(
        self,
        src: AsyncConnection,
        present: dict[str, set[str]],
        name: str,
        fingerprint: str,
        report: ImportReport,
    ) -> None:
        storage = self.storage
        assert storage.directory is not None
        owned = storage.directory.owned_by(name)
        shard = storage.shards[name]
        batch_id = f"import-{fingerprint}-{name}"
        async with shard.begin() as conn:
            done = (
                await conn.execute(
                    select(t.totals_outbox.c.batch_id).where(t.totals_outbox.c.batch_id == batch_id)
                )
            ).first()
        async with storage.begin() as conn:
            applied = (
                await conn.execute(
                    select(t.totals_applied.c.batch_id).where(
                        t.totals_applied.c.batch_id == batch_id
                    )
                )
            ).first()
        if done is not None or applied is not None:
            report.skipped.append(name)
            await totals.apply_with(
                storage.begin, [] if applied else await self._outbox(shard, batch_id)
            )
            return
        users = [
            dict(r._mapping)
            for r in (
                await src.execute(
                    select(*_columns(t.users, present["users"])).where(
                        prefix_clause(t.users.c.guid, owned)
                    )
                )
            ).all()
        ]
        named = [u for u in users if u.get("nickname")]
        for user in named:
            if not await storage.claim_nickname(user["guid"], user["nickname"]):
                raise ImportFailed(
                    f"nickname {user['nickname']!r} of user {user['guid']} is taken by another user"
                )
        counted = Delta()
        rows = 0
        q = t.queries.c
        where = prefix_clause(q.user_guid, owned)
        try:
            async with shard.begin() as conn:
                if users:
                    await conn.execute(insert(t.users), [self._user(u) for u in users])
                last = 0
                while True:
                    chunk = [
                        dict(r._mapping)
                        for r in (
                            await src.execute(
                                select(*_columns(t.queries, present["queries"]))
                                .where(where, q.id > last)
                                .order_by(q.id)
                                .limit(self.chunk_rows)
                            )
                        ).all()
                    ]
                    if not chunk:
                        break
                    last = int(chunk[-1]["id"])
                    values = [self._query(r, fingerprint) for r in chunk]
                    await conn.execute(insert(t.queries), values)
                    counted += sum(
                        (
                            Delta(1, float(v["processing_time"] or 0), float(v["cost"] or 0))
                            for v in values
                            if _charged(v)
                        ),
                        Delta(),
                    )
                    rows += len(chunk)
                    self._progress(f"import {name}", rows, rows)
                keys = await self._keys(src, present, owned)
                if keys:
                    await conn.execute(insert(t.api_keys), keys)
                await totals.add_to_outbox(conn, batch_id, counted)
                await fences.check(conn, owned)
        except BaseException:
            for user in named:
                await storage.release_nickname(user["guid"], user["nickname"])
            raise
        await totals.apply_with(storage.begin, [(batch_id, counted)])
        await self._index_keys(keys)
        report.users += len(users)
        report.queries += rows
        report.keys += len(keys)
        report.per_shard[name] = len(users)

    @staticmethod
    async def _outbox(shard: Any, batch_id: str) -> list[tuple[str, Delta]]:
        async with shard.begin() as conn:
            row = (
                await conn.execute(
                    select(t.totals_outbox).where(t.totals_outbox.c.batch_id == batch_id)
                )
            ).first()
        return [(batch_id, Delta.of_row(row))] if row is not None else []

    @staticmethod
    def _user(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "guid": row["guid"],
            "nickname": row.get("nickname"),
            "is_sysop": bool(row.get("is_sysop") or False),
            "total_query_time": float(row.get("total_query_time") or 0.0),
            "total_cost": float(row.get("total_cost") or 0.0),
            "is_banned": bool(row.get("is_banned") or False),
            "query_count": int(row.get("query_count") or 0),
        }

    @staticmethod
    def _query(row: dict[str, Any], fingerprint: str) -> dict[str, Any]:
        values = {k: v for k, v in row.items() if k != "id"}
        if not values.get("job_id"):
            values["job_id"] = f"orig-{fingerprint}-{row['id']}"
        values.setdefault("status", None)
        return values

    async def _keys(
        self, src: AsyncConnection, present: dict[str, set[str]], owned: list[str]
    ) -> list[dict[str, Any]]:
        if "api_keys" not in present:
            return []
        rows = (
            await src.execute(
                select(*_columns(t.api_keys, present["api_keys"]))
                .where(prefix_clause(t.api_keys.c.user_guid, owned))
                .order_by(t.api_keys.c.id)
            )
        ).all()
        return [{k: v for k, v in r._mapping.items() if k != "id"} for r in rows]

    async def _index_keys(self, keys: list[dict[str, Any]]) -> None:
        if not keys:
            return
        index = t.api_key_index.c
        async with self.storage.begin() as conn:
            known: set[str] = set(
                (
                    await conn.execute(
                        select(index.key_hash).where(
                            index.key_hash.in_([k["key_hash"] for k in keys])
                        )
                    )
                ).scalars()
            )
            fresh = [
                {"key_hash": k["key_hash"], "prefix": k["prefix"], "user_guid": k["user_guid"]}
                for k in keys
                if k["key_hash"] not in known
            ]
            if fresh:
                await conn.execute(insert(t.api_key_index), fresh)

    async def _globals(
        self, src: AsyncConnection, present: dict[str, set[str]], report: ImportReport
    ) -> None:
        """Workers and models by name, and the first user, into the main database."""
        async with self.storage.begin() as conn:
            for table, counter in ((t.ai_workers, "workers"), (t.huggingface_models, "models")):
                if table.name not in present:
                    continue
                known: set[str] = set((await conn.execute(select(table.c.name))).scalars())
                rows = (await src.execute(select(*_columns(table, present[table.name])))).all()
                fresh = [
                    {k: v for k, v in r._mapping.items() if k != "id"}
                    for r in rows
                    if r.name not in known
                ]
                if fresh:
                    await conn.execute(insert(table), fresh)
                setattr(report, counter, len(fresh))
        u = t.users.c
        people = (
            await src.execute(
                select(u.guid)
                .where(u.nickname.is_(None) | u.nickname.not_like(f"{RESERVED_PREFIX}%"))
                .order_by(u.is_sysop.desc(), u.guid)
                .limit(1)
            )
        ).first()
        if people is not None:
            await self.storage.store.claim_first_user(people.guid)

    async def _check(self, expected: _PerUser, report: ImportReport) -> None:
        """Recompute every imported user's figures in its shard and compare with the source."""
        storage = self.storage
        assert storage.directory is not None
        by_shard: defaultdict[str, list[str]] = defaultdict(list)
        for guid in expected:
            by_shard[storage.directory.owner(prefix_of(guid))].append(guid)
        found: _PerUser = {}
        for name, guids in by_shard.items():
            for start in range(0, len(guids), self.chunk_rows):
                async with storage.shards[name].begin() as conn:
                    found.update(await self._per_user(conn, guids[start : start + self.chunk_rows]))
        wrong = [g for g, d in expected.items() if not d.close_to(found.get(g, Delta()))]
        if wrong:
            report.problems.append(
                f"{len(wrong)} user(s) whose rows in their shard do not add up to the source's, "
                f"e.g. {wrong[0]}: source {expected[wrong[0]]}, here {found.get(wrong[0])}"
            )
