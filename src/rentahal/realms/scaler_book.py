"""The scaler's bookkeeping in the shared database: which workers it started, where."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from rentahal.realms.provisioners import Provisioned
from rentahal.storage import tables as t
from rentahal.storage.database import Storage


class ScalerBook:
    """The ``scaler_workers`` table: read by a new leader, written on every start and stop."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def add(self, worker: Provisioned, node_id: str) -> None:
        """Remember a started worker."""
        async with self.storage.begin() as conn:
            await conn.execute(
                delete(t.scaler_workers).where(t.scaler_workers.c.name == worker.name)
            )
            await conn.execute(
                insert(t.scaler_workers).values(
                    name=worker.name,
                    realm=worker.realm,
                    query_type=worker.query_type,
                    address=worker.address,
                    node_id=node_id,
                )
            )

    async def remove(self, name: str) -> None:
        """Forget a stopped worker."""
        async with self.storage.begin() as conn:
            await conn.execute(delete(t.scaler_workers).where(t.scaler_workers.c.name == name))

    async def load(self) -> list[tuple[Provisioned, str]]:
        """Every remembered worker with the node that started it."""
        async with self.storage.begin() as conn:
            rows = (await conn.execute(select(t.scaler_workers))).mappings().all()
        return [
            (Provisioned(r["name"], r["address"], r["realm"], r["query_type"]), r["node_id"])
            for r in rows
        ]
