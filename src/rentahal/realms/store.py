"""RealmStore: the cluster's realm and pool configuration in the shared database.

The whole configuration (what ``realms.yml`` holds, plus which realms are
stopped) is one row with a version number. Every write increments the version
in the same statement that writes the row, so a write either lands on the
version it was based on or not at all (compare-and-set; no locks, the same on
SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from rentahal.errors import StaleVersion
from rentahal.realms.config import RealmsFile
from rentahal.storage import tables as t
from rentahal.storage.database import Storage

_ROW_ID = 1


@dataclass(frozen=True, slots=True)
class StoredRealms:
    """One version of the realm configuration."""

    version: int
    file: RealmsFile
    stopped: frozenset[str]


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _encode(file: RealmsFile, stopped: frozenset[str] | set[str]) -> dict[str, str]:
    return {
        "config": json.dumps(file.model_dump(mode="json")),
        "stopped": json.dumps(sorted(stopped)),
    }


class RealmStore:
    """Reads and writes the versioned realm configuration row."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def load(self) -> StoredRealms | None:
        """The current configuration, or ``None`` when none was stored yet."""
        async with self.storage.begin() as conn:
            row = (
                await conn.execute(select(t.realm_config).where(t.realm_config.c.id == _ROW_ID))
            ).first()
        if row is None:
            return None
        return StoredRealms(
            version=int(row.version),
            file=RealmsFile.model_validate(json.loads(row.config)),
            stopped=frozenset(json.loads(row.stopped or "[]")),
        )

    async def version(self) -> int | None:
        """The current version number (a cheap read for the periodic check)."""
        async with self.storage.begin() as conn:
            value = (
                await conn.execute(
                    select(t.realm_config.c.version).where(t.realm_config.c.id == _ROW_ID)
                )
            ).scalar()
        return None if value is None else int(value)

    async def seed(self, file: RealmsFile, node_id: str = "") -> StoredRealms:
        """Store ``file`` as version 1 unless a configuration exists; the stored one."""
        try:
            async with self.storage.begin() as conn:
                await conn.execute(
                    insert(t.realm_config).values(
                        id=_ROW_ID,
                        version=1,
                        updated_at=_utcnow(),
                        updated_by=node_id,
                        **_encode(file, frozenset()),
                    )
                )
        except IntegrityError:
            pass  # another node seeded first; its row is the configuration
        stored = await self.load()
        assert stored is not None
        return stored

    async def save(
        self,
        file: RealmsFile,
        stopped: frozenset[str] | set[str],
        based_on: int,
        node_id: str = "",
    ) -> StoredRealms:
        """Write a new version derived from version ``based_on``.

        ``StaleVersion`` when the stored version is no longer ``based_on``
        (another write came first); nothing is written then.
        """
        table = t.realm_config
        async with self.storage.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(table.c.id == _ROW_ID, table.c.version == based_on)
                .values(
                    version=table.c.version + 1,
                    updated_at=_utcnow(),
                    updated_by=node_id,
                    **_encode(file, stopped),
                )
            )
            if result.rowcount != 1:
                current = (
                    await conn.execute(select(table.c.version).where(table.c.id == _ROW_ID))
                ).scalar()
                raise StaleVersion(based_on, int(current or 0))
        return StoredRealms(based_on + 1, file, frozenset(stopped))
