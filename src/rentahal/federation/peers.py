"""Peers: other installations, kept in the database, with their live figures in memory."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, insert, select, update

from rentahal.federation.identity import decode_public_key
from rentahal.storage import tables as t
from rentahal.storage.database import Storage

PeerState = Literal["pending", "active", "down", "blocked"]
MAX_BACKOFF_S = 300.0


@dataclass
class Peer:
    """One other installation as this one knows it."""

    federation_id: str
    callback_url: str
    public_key: str
    state: PeerState = "active"
    last_seen: float | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Live figures (not stored).
    rtt_ms: float | None = None
    queries_out: int = 0
    queries_in: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    retry_at: float = 0.0

    @property
    def key(self) -> Ed25519PublicKey:
        """The peer's verification key."""
        return decode_public_key(self.public_key)

    def usable(self) -> bool:
        """Active and not backing off."""
        return self.state == "active"

    def failed(self, interval_s: float) -> None:
        """A call to the peer failed: down, and back-off before the next try."""
        self.failures += 1
        self.consecutive_failures += 1
        if self.state in ("active", "down"):
            self.state = "down"
        delay = min(MAX_BACKOFF_S, interval_s * 2 ** min(self.consecutive_failures - 1, 10))
        self.retry_at = time.monotonic() + delay

    def answered(self, rtt_ms: float) -> None:
        """A call to the peer succeeded."""
        self.rtt_ms = round(rtt_ms, 2)
        self.last_seen = time.time()
        self.consecutive_failures = 0
        self.retry_at = 0.0
        if self.state == "down":
            self.state = "active"

    def view(self) -> dict[str, Any]:
        """The peer for the sysop console and the status route."""
        return {
            "federation_id": self.federation_id,
            "callback_url": self.callback_url,
            "state": self.state,
            "last_seen": self.last_seen,
            "rtt_ms": self.rtt_ms,
            "services": self.services,
            "queries_out": self.queries_out,
            "queries_in": self.queries_in,
            "failures": self.failures,
        }


class PeerStore:
    """The ``federation_peers`` table."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def load(self) -> list[Peer]:
        """Every stored peer."""
        async with self.storage.begin() as conn:
            rows = (await conn.execute(select(t.federation_peers))).mappings().all()
        return [
            Peer(
                federation_id=row["federation_id"],
                callback_url=row["callback_url"],
                public_key=row["public_key"],
                state=row["state"],
                last_seen=row["last_seen"],
                services=json.loads(row["services"] or "{}"),
            )
            for row in rows
        ]

    async def save(self, peer: Peer) -> None:
        """Insert or update ``peer``'s stored fields."""
        values = {
            "callback_url": peer.callback_url,
            "public_key": peer.public_key,
            "state": "active" if peer.state == "down" else peer.state,
            "last_seen": peer.last_seen,
            "services": json.dumps(peer.services),
        }
        table = t.federation_peers
        async with self.storage.begin() as conn:
            changed = await conn.execute(
                update(table).where(table.c.federation_id == peer.federation_id).values(**values)
            )
            if changed.rowcount == 0:
                await conn.execute(
                    insert(table).values(
                        federation_id=peer.federation_id, created_at=datetime.now(UTC), **values
                    )
                )

    async def delete(self, federation_id: str) -> bool:
        """Forget a peer."""
        table = t.federation_peers
        async with self.storage.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.federation_id == federation_id))
        return bool(result.rowcount)
