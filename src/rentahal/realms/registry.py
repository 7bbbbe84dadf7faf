"""RealmRegistry: realms by name, query types to primary and backup realms, user affinity."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from rentahal.errors import RealmNotFound
from rentahal.models import AIWorker
from rentahal.realms.config import PoolConfig, RealmConfig, RealmsFile


@dataclass(slots=True)
class Realm:
    """A realm's configuration and run state."""

    name: str
    config: RealmConfig
    stopped: bool = False


def _score(guid: str, realm: str) -> int:
    digest = hashlib.blake2b(f"{realm}|{guid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class RealmRegistry:
    """All realms of this broker and the rules that map queries and users onto them."""

    def __init__(self, realms_file: RealmsFile, stopped: Iterable[str] = ()) -> None:
        self.file = realms_file
        self.realms: dict[str, Realm] = {}
        self.version = 0  # bumped when realms are created, changed or deleted
        self.replace(realms_file, stopped)

    def replace(self, realms_file: RealmsFile, stopped: Iterable[str] = ()) -> None:
        """Take a whole configuration at once (a new version of the shared one)."""
        halted = set(stopped)
        self.file = realms_file
        self.realms = {
            name: Realm(name, cfg, stopped=name in halted)
            for name, cfg in realms_file.realms.items()
        }
        self.version += 1

    def stopped_names(self) -> frozenset[str]:
        """Names of the stopped realms."""
        return frozenset(name for name, realm in self.realms.items() if realm.stopped)

    @property
    def pools(self) -> dict[str, PoolConfig]:
        """Pool aliases by name."""
        return self.file.pools

    def get(self, name: str) -> Realm:
        """The realm ``name``; ``RealmNotFound`` otherwise."""
        try:
            return self.realms[name]
        except KeyError:
            raise RealmNotFound(f"No realm named {name}") from None

    def primary_for(self, query_type: str) -> Realm | None:
        """The first realm (in file order) whose primary query type is ``query_type``."""
        for realm in self.realms.values():
            if realm.config.primary_query_type == query_type:
                return realm
        return None

    def is_primary(self, name: str) -> bool:
        """True when ``name`` is the primary realm of its query type."""
        realm = self.get(name)
        return self.primary_for(realm.config.primary_query_type) is realm

    def route_candidates(self, query_type: str) -> list[Realm]:
        """The primary realm for ``query_type`` followed by its backup realms."""
        primary = self.primary_for(query_type)
        if primary is None:
            return []
        backups = [self.realms[b] for b in primary.config.backup_realms if b in self.realms]
        return [primary, *backups]

    def routing_table(self) -> dict[str, list[str]]:
        """Query type -> realm names in routing order."""
        types = {r.config.primary_query_type for r in self.realms.values()}
        return {t: [r.name for r in self.route_candidates(t)] for t in sorted(types)}

    def realm_of_worker(self, worker: AIWorker) -> str | None:
        """A worker's realm: its ``realm`` field, else the primary realm of its type."""
        if worker.realm and worker.realm in self.realms:
            return worker.realm
        primary = self.primary_for(worker.type)
        return primary.name if primary else None

    def assign_user(self, guid: str) -> str | None:
        """A stable realm for a user's connection (rendezvous hashing).

        Adding a realm moves only the users that now score highest on it.
        """
        if not self.realms:
            return None
        return max(self.realms, key=lambda name: _score(guid, name))

    def create(self, name: str, config: RealmConfig) -> Realm:
        """Add a realm at run time."""
        if name in self.realms:
            raise ValueError(f"Realm {name} already exists")
        self._check_backups(name, config)
        realm = self.realms[name] = Realm(name, config)
        self.version += 1
        self.file.realms[name] = config
        return realm

    def update(self, name: str, config: RealmConfig) -> Realm:
        """Replace a realm's configuration (the primary of a type keeps that type)."""
        realm = self.get(name)
        if self.is_primary(name) and (config.primary_query_type != realm.config.primary_query_type):
            raise ValueError(f"{name} is the primary realm of its query type; its type is fixed")
        self._check_backups(name, config)
        realm.config = config
        self.version += 1
        self.file.realms[name] = config
        return realm

    def delete(self, name: str) -> Realm:
        """Remove a realm; the primary realm of a query type cannot be deleted."""
        realm = self.get(name)
        if self.is_primary(name):
            raise ValueError(f"{name} is a primary realm and cannot be deleted")
        for other in self.realms.values():
            if name in other.config.backup_realms:
                other.config.backup_realms.remove(name)
        del self.realms[name]
        self.version += 1
        del self.file.realms[name]
        return realm

    def _check_backups(self, name: str, config: RealmConfig) -> None:
        for backup in config.backup_realms:
            if backup == name or backup not in self.realms:
                raise ValueError(f"backup realm {backup} does not exist")
