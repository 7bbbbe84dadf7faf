"""Workers that register themselves: scoped tokens, registrations, heartbeat leases.

A sysop issues a token (``rentahal workers token create``) scoped to a realm or a
query type; only its SHA-256 is stored. A worker registers with it, renews its
lease with heartbeats, and unregisters when it stops; a worker whose lease ran
out (no heartbeat for ``LEASE_S``) is removed by the node holding the
``worker-leases`` lease. Revoking a token removes its workers at the next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from rentahal.errors import QueryRejected
from rentahal.models import AIWorker
from rentahal.realms.config import ScalingConfig
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.keys import hash_key

if TYPE_CHECKING:
    from rentahal.broker import Broker

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "rwt_"
PREFIX_CHARS = len(TOKEN_PREFIX) + 8


class RegistrationRefused(QueryRejected):
    """A registration, heartbeat or unregistration that is not allowed (message says why).

    ``status``: 401 for a token that is unknown or revoked, 403 for one outside its scope.
    """

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WorkerToken:
    """What may be shown about a token (never the token)."""

    prefix: str
    name: str
    realm: str | None
    query_type: str | None
    revoked: bool

    def view(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "prefix": self.prefix,
            "name": self.name,
            "realm": self.realm,
            "query_type": self.query_type,
            "revoked": self.revoked,
        }


class WorkerTokens:
    """The ``worker_tokens`` table."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def create(
        self, *, name: str = "", realm: str | None = None, query_type: str | None = None
    ) -> tuple[str, WorkerToken]:
        """A new token (shown once) and its record; scoped to ``realm`` or ``query_type``."""
        if realm is None and query_type is None:
            raise ValueError("a token is scoped to a realm or a query type")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = WorkerToken(token[:PREFIX_CHARS], name[:100], realm, query_type, False)
        async with self.storage.begin() as conn:
            await conn.execute(
                insert(t.worker_tokens).values(
                    prefix=record.prefix,
                    token_hash=hash_key(token),
                    name=record.name,
                    realm=realm,
                    query_type=query_type,
                    created_at=datetime.now(UTC).replace(tzinfo=None),
                    revoked=False,
                )
            )
        return token, record

    async def verify(self, token: str) -> WorkerToken | None:
        """The record of a valid, unrevoked token."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        table = t.worker_tokens
        async with self.storage.begin() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.token_hash == hash_key(token))))
                .mappings()
                .first()
            )
        if row is None or row["revoked"]:
            return None
        return WorkerToken(row["prefix"], row["name"], row["realm"], row["query_type"], False)

    async def list(self) -> list[WorkerToken]:
        """Every token."""
        async with self.storage.begin() as conn:
            rows = (await conn.execute(select(t.worker_tokens))).mappings().all()
        return [
            WorkerToken(r["prefix"], r["name"], r["realm"], r["query_type"], bool(r["revoked"]))
            for r in rows
        ]

    async def revoke(self, prefix: str) -> bool:
        """Revoke a token by its prefix; its workers go at the next sweep."""
        table = t.worker_tokens
        async with self.storage.begin() as conn:
            result = await conn.execute(
                update(table).where(table.c.prefix == prefix).values(revoked=True)
            )
        return bool(result.rowcount)


class Registrations:
    """Registers, renews and removes self-registered workers (through the fleet)."""

    def __init__(self, broker: Broker, storage: Storage) -> None:
        self.broker = broker
        self.storage = storage
        self.tokens = WorkerTokens(storage)

    @property
    def heartbeat_s(self) -> float:
        """How often registered workers should heartbeat."""
        return self._scaling().heartbeat_s

    @property
    def lease_s(self) -> float:
        """How long a registration lasts without a heartbeat."""
        return self._scaling().lease_s

    def _scaling(self) -> ScalingConfig:
        realms = self.broker.realms
        return realms.registry.file.scaling if realms is not None else ScalingConfig()

    async def _token(self, token: str) -> WorkerToken:
        record = await self.tokens.verify(token)
        if record is None:
            raise RegistrationRefused("unknown or revoked worker token", status=401)
        return record

    async def register(self, token: str, worker: AIWorker) -> AIWorker:
        """Add ``worker`` in the token's scope and give it a lease."""
        record = await self._token(token)
        if record.query_type is not None and worker.type != record.query_type:
            raise RegistrationRefused(f"this token registers {record.query_type} workers only")
        realm = record.realm
        if realm is not None:
            realms = self.broker.realms
            if realms is None or realm not in realms.registry.realms:
                raise RegistrationRefused(f"the token's realm {realm} does not exist")
            kind = realms.registry.realms[realm].config.primary_query_type
            if worker.type != kind:
                raise RegistrationRefused(f"realm {realm} takes {kind} workers only")
        existing = self.broker.parts().registry.get(worker.name)
        if existing is not None and not await self._leased_by(worker.name, record.prefix):
            raise RegistrationRefused(f"a worker named {worker.name} is already registered")
        worker = worker.model_copy(update={"realm": realm, "api_key": None})
        await self.broker.fleet.add_worker(worker)
        await self._lease(worker.name, record.prefix)
        return worker

    async def heartbeat(self, token: str, name: str) -> None:
        """Renew a registered worker's lease."""
        record = await self._token(token)
        if not await self._leased_by(name, record.prefix):
            raise RegistrationRefused(f"{name} is not registered with this token")
        await self._lease(name, record.prefix)

    async def unregister(self, token: str, name: str) -> None:
        """Remove a worker that registered with this token."""
        record = await self._token(token)
        if not await self._leased_by(name, record.prefix):
            raise RegistrationRefused(f"{name} is not registered with this token")
        await self._drop(name)

    async def sweep(self) -> list[str]:
        """Remove workers whose lease ran out or whose token was revoked."""
        leases, tokens = t.worker_leases, t.worker_tokens
        now = time.time()
        async with self.storage.begin() as conn:
            rows = (
                await conn.execute(
                    select(leases.c.worker, leases.c.expires_at, tokens.c.revoked).join(
                        tokens, tokens.c.prefix == leases.c.token_prefix, isouter=True
                    )
                )
            ).all()
        gone = [
            str(row.worker)
            for row in rows
            if float(row.expires_at) < now or row.revoked is not False
        ]
        for name in gone:
            await self._drop(name)
        return gone

    async def _lease(self, name: str, prefix: str) -> None:
        table = t.worker_leases
        expires = time.time() + self.lease_s
        async with self.storage.begin() as conn:
            changed = await conn.execute(
                update(table).where(table.c.worker == name).values(expires_at=expires)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(table).values(worker=name, token_prefix=prefix, expires_at=expires)
                )

    async def _leased_by(self, name: str, prefix: str) -> bool:
        table = t.worker_leases
        async with self.storage.begin() as conn:
            row = (await conn.execute(select(table).where(table.c.worker == name))).first()
        return row is not None and row.token_prefix == prefix

    async def _drop(self, name: str) -> None:
        async with self.storage.begin() as conn:
            await conn.execute(delete(t.worker_leases).where(t.worker_leases.c.worker == name))
        await self.broker.fleet.remove_worker(name)


class LeaseSweeper:
    """Runs :meth:`Registrations.sweep` every ``interval_s`` on the node holding its lease."""

    def __init__(self, registrations: Registrations) -> None:
        self.registrations = registrations
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sweeping."""
        self._task = asyncio.create_task(self._loop(), name="worker-lease-sweeper")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        broker = self.registrations.broker
        while True:
            interval = self.registrations.heartbeat_s
            await asyncio.sleep(interval)
            try:
                if await broker.parts().state.try_lead(
                    "worker-leases", broker.node_id, interval * 3
                ):
                    for name in await self.registrations.sweep():
                        logger.info(
                            "worker %s removed: its lease ran out or its token was revoked", name
                        )
            except Exception:
                logger.exception("worker lease sweep failed")
