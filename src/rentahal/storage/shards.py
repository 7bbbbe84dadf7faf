"""ShardedStorage: the main database plus the shards that hold user data.

The main database keeps the global tables (workers, models, realms, system
totals, the key index, the shard directory); users, queries, API keys and
per-user totals live only in the shard the directory names for the user's
GUID prefix. Each shard has its own engine and pool and is migrated on start.
:meth:`ShardedStorage.for_user` answers a :class:`PrefixStorage`: the
ordinary ``Storage`` methods, whose transactions go to the prefix's current
shard and check its fence (:mod:`rentahal.storage.fences`). Sysop views over
every user (user list, connected users, averages) are scatter-gather with a
time limit; a shard that does not answer is left out and named in ``missing``.

Until the directory exists (``database_sharding`` off) everything is the one
main database, exactly as :class:`~rentahal.storage.database.Storage`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from rentahal.config import Settings
from rentahal.errors import ConfigError, ShardUnavailable, StorageError
from rentahal.models import User
from rentahal.storage import fences, totals, views
from rentahal.storage import tables as t
from rentahal.storage.database import Storage
from rentahal.storage.directory import Directory, DirectoryStore, shard_url
from rentahal.storage.prefix_storage import PrefixStorage
from rentahal.storage.prefixes import MAIN, prefix_of
from rentahal.storage.scatter import GATHER_TIMEOUT_S
from rentahal.storage.shard_config import ShardingConfig, read_sharding

logger = logging.getLogger(__name__)

SYNC_INTERVAL_S = 2.0  # how often a node compares its directory version (and reports it)
PROBE_INTERVAL_S = 1.0  # how often a shard that failed is tried again
RECOVER_INTERVAL_S = 10.0  # how often the totals outboxes are settled
HOLD_POLL_S = 0.05  # how often a held prefix is looked at
HOLD_LIMIT_S = 30.0  # the longest a write waits for a moving prefix
CONNECT_TIMEOUT_S = 5.0


class ShardedStorage(Storage):
    """The main database, and the shards once ``database_sharding`` is on (see module doc)."""

    def __init__(
        self,
        url: str,
        *,
        realms_file: Path | None = None,
        node_id: str = "",
        gather_timeout_s: float = GATHER_TIMEOUT_S,
        sync_interval_s: float = SYNC_INTERVAL_S,
        serve: bool = True,
        echo: bool = False,
    ) -> None:
        super().__init__(url, echo=echo)
        self.serve = serve  # False for the command line: no background upkeep
        self.realms_file = realms_file
        self.base_dir = realms_file.parent if realms_file is not None else Path()
        self.node_id = node_id
        self.gather_timeout_s = gather_timeout_s
        self.sync_interval_s = sync_interval_s
        self.store = DirectoryStore(self.begin)
        self.directory: Directory | None = None
        self.shards: dict[str, Storage] = {}
        self.missing: list[str] = []  # shards the last sysop view could not read
        self._views: dict[str, PrefixStorage] = {}
        self._down: dict[str, float] = {}
        self._unmigrated: set[str] = set()
        self._suspects: set[str] = set()
        self._held: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._sync_now = False
        self._task: asyncio.Task[None] | None = None

    @property
    def sharded(self) -> bool:
        """Whether user data lives in shards (the directory exists)."""
        return self.directory is not None

    # set-up ------------------------------------------------------------------

    async def migrate(self) -> None:
        """Migrate the main database, then (when sharded) open and migrate every shard."""
        await super().migrate()
        await self.open()

    async def open(self) -> None:
        """Load the directory (creating it when sharding is configured) and the shards."""
        directory = await self.store.load()
        if directory is None:
            config = await self._configured()
            if not config.enabled:
                return
            names = [(s.name, s.connection_string) for s in config.shards]
            await self.enable(names, config.shard_map)
            return
        await self._open_shards()
        self.directory = directory
        await self._ensure_fences()
        self._start()

    async def enable(self, shards: list[tuple[str, str]], shard_map: dict[str, str]) -> None:
        """Start sharding over ``shards`` (name, connection string): write the directory.

        When the main database holds users already, every prefix stays there
        (the main database is then shard ``main``) until moves are asked for.
        """
        for name, connection_string in shards:
            await self.store.add_shard(name, connection_string)
        await self._open_shards()
        names = [name for name, _ in shards]
        self.directory = await self.store.create(names, shard_map, await self._main_users())
        await self._ensure_fences()
        self._start()

    async def add_shard(self, name: str, connection_string: str) -> None:
        """Register (and migrate) a shard; it holds nothing until prefixes move to it."""
        await self.store.add_shard(name, connection_string)
        await self._open_shards()
        if name in self._unmigrated:
            raise ShardUnavailable(name)

    def _start(self) -> None:
        if self.serve and self._task is None:
            self._task = asyncio.create_task(self._run(), name="shard-sync")

    async def _configured(self) -> ShardingConfig:
        """``database_sharding`` of the shared realm configuration, else of ``realms.yml``."""
        async with self.begin() as conn:
            row = (
                await conn.execute(select(t.realm_config.c.config).where(t.realm_config.c.id == 1))
            ).first()
        if row is not None:
            section = json.loads(row.config).get("database_sharding") or {}
            return ShardingConfig.model_validate(section)
        if self.realms_file is None:
            return ShardingConfig()
        return await asyncio.to_thread(read_sharding, self.realms_file)

    async def _main_users(self) -> bool:
        """Whether the main database holds user data already (users, or queries of any)."""
        async with self.begin() as conn:
            for column in (t.users.c.guid, t.queries.c.id):
                if (await conn.execute(select(column).limit(1))).first() is not None:
                    return True
        return False

    async def _open_shards(self) -> None:
        """Engines for registered shards not open yet; each is migrated (a down one later)."""
        if MAIN not in self.shards:
            self.shards[MAIN] = Storage.sharing(self)
        fresh = []
        for name, connection_string in (await self.store.shards()).items():
            if name not in self.shards:
                url = shard_url(connection_string, self.base_dir)
                self.shards[name] = Storage(url, connect_timeout_s=CONNECT_TIMEOUT_S)
                fresh.append(name)
        for name in fresh:  # one at a time: Alembic's context is process-global
            await self._migrate_shard(name)

    async def _migrate_shard(self, name: str) -> bool:
        try:
            async with asyncio.timeout(30):
                await self.shards[name].migrate()
        except (StorageError, OSError, TimeoutError, ConfigError) as exc:
            if name not in self._down:
                logger.error(
                    "shard %s is unavailable (%s); its users get errors until it is back", name, exc
                )
            self._down.setdefault(name, time.monotonic())
            self._unmigrated.add(name)
            return False
        self._unmigrated.discard(name)
        return True

    async def _ensure_fences(self, names: list[str] | None = None) -> None:
        """Fence rows for owned prefixes that have none (a fresh directory)."""
        assert self.directory is not None
        for name in names if names is not None else self.directory.in_use():
            if name in self._down:
                continue
            owned = self.directory.owned_by(name)
            async with self.shards[name].begin() as conn:
                have = {f.prefix for f in await fences.read(conn, owned)}
                missing = [p for p in owned if p not in have]
                if missing:
                    await fences.claim(conn, missing)

    async def close(self) -> None:
        """Stop the background task, close every shard, then the main database."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for shard in self.shards.values():
            await shard.close()
        await super().close()

    # placement ---------------------------------------------------------------

    def for_user(self, guid: str) -> Storage:
        """The storage of ``guid``'s data: this one unsharded, else the prefix's view."""
        if self.directory is None:
            return self
        prefix = prefix_of(guid)
        view = self._views.get(prefix)
        if view is None:
            view = self._views[prefix] = PrefixStorage(self, prefix)
        return view

    def owner_of(self, prefix: str) -> tuple[str, Storage]:
        """The name and storage of the shard holding ``prefix`` now."""
        assert self.directory is not None
        name = self.directory.owner(prefix)
        return name, self.shards[name]

    async def claim_nickname(self, guid: str, nickname: str) -> bool:
        """Reserve ``nickname`` for ``guid`` across shards; ``False`` when another user has it."""
        index = t.nickname_index.c
        try:
            async with self.begin() as conn:
                await conn.execute(
                    insert(t.nickname_index).values(nickname=nickname, user_guid=guid)
                )
        except IntegrityError:
            async with self.begin() as conn:
                holder = (
                    await conn.execute(select(index.user_guid).where(index.nickname == nickname))
                ).scalar()
            return holder == guid
        return True

    async def release_nickname(self, guid: str, nickname: str) -> None:
        """Free ``nickname`` if ``guid`` holds it."""
        index = t.nickname_index.c
        async with self.begin() as conn:
            await conn.execute(
                delete(t.nickname_index).where(index.nickname == nickname, index.user_guid == guid)
            )

    def check_available(self, guid: str) -> None:
        """Raise ``ShardUnavailable`` when ``guid``'s shard is known to be down."""
        if self.directory is not None:
            self.raise_if_down(self.directory.owner(prefix_of(guid)))

    def down_shards(self) -> set[str]:
        """The shards known to be down now."""
        return set(self._down)

    def raise_if_down(self, name: str) -> None:
        """Fail fast while a shard is known to be down (probed every ``PROBE_INTERVAL_S``)."""
        if name in self._down:
            raise ShardUnavailable(name)

    def suspect(self, name: str, exc: BaseException) -> None:
        """A call to shard ``name`` failed: probe it now."""
        logger.warning("shard %s failed: %s", name, exc)
        self._suspects.add(name)
        self._wake.set()

    def hold(self, prefix: str) -> None:
        """The prefix is frozen for a move: writes wait until its fence opens again."""
        if prefix not in self._held:
            logger.debug("writes of prefix %s wait for a move", prefix)
            self._held[prefix] = asyncio.Event()
            self._wake.set()

    def is_held(self, prefix: str) -> bool:
        """Whether writes of ``prefix`` wait for a move."""
        return prefix in self._held

    async def claim_first_user(self, guid: str) -> bool:
        """Whether ``guid`` is the installation's first user (then it becomes sysop)."""
        return await self.store.claim_first_user(guid)

    async def wait_writable(self, prefix: str, limit_s: float = HOLD_LIMIT_S) -> None:
        """Wait (at most ``limit_s``) while ``prefix`` is held."""
        event = self._held.get(prefix)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit_s):
                    await event.wait()

    def directory_changed(self) -> None:
        """A move switched prefixes (control channel): reload the directory now."""
        self._sync_now = True
        self._wake.set()

    # the background task -----------------------------------------------------

    async def _run(self) -> None:
        next_sync = next_probe = next_recover = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOLD_POLL_S if self._held else PROBE_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            try:
                if self._sync_now or now >= next_sync or self._held:
                    self._sync_now = False
                    await self.sync(report=now >= next_sync)
                    if now >= next_sync:
                        next_sync = now + self.sync_interval_s
                if self._held:
                    await self._release_held()
                if self._suspects or (self._down and now >= next_probe):
                    await self._probe()
                    next_probe = now + PROBE_INTERVAL_S
                if now >= next_recover:
                    next_recover = now + RECOVER_INTERVAL_S
                    await totals.recover(self.begin, self._outbox_begins())
            except Exception as exc:  # the main database is away: the next round tries again
                logger.warning("shard directory upkeep failed: %s", exc)

    def _outbox_begins(self) -> dict[str, Any]:
        return {n: s.begin for n, s in self.shards.items() if n != MAIN and n not in self._down}

    async def sync(self, *, report: bool = True) -> bool:
        """Reload the directory when its version moved on; whether it did."""
        version = await self.store.version()
        assert self.directory is not None
        changed = version is not None and version != self.directory.version
        if changed:
            await self._open_shards()
            directory = await self.store.load()
            if directory is not None:
                self.directory = directory
                logger.info("shard directory version %d loaded", directory.version)
        if report and self.node_id:
            await self.store.report_node(self.node_id, self.directory.version)
        return changed

    async def _release_held(self) -> None:
        assert self.directory is not None
        for prefix in list(self._held):
            name, shard = self.owner_of(prefix)
            if name in self._down:
                continue
            async with shard.begin() as conn:
                fence = await fences.read(conn, [prefix])
                now = await fences.db_now(conn)
            if fence and fence[0].open_at(now):
                logger.debug("writes of prefix %s go to shard %s", prefix, name)
                self._held.pop(prefix).set()

    async def _probe(self) -> None:
        names = set(self._down) | self._suspects
        self._suspects.clear()
        for name in names:
            shard = self.shards.get(name)
            if shard is None:
                continue
            if name in self._unmigrated:  # not migrated yet: its tables may not exist
                up = await self._migrate_shard(name)
            else:
                up = await shard.reachable(timeout_s=2.0)
            if up and self._down.pop(name, None) is not None:
                logger.info("shard %s answers again", name)
                await self._ensure_fences([name])
            elif not up and name not in self._down:
                logger.error("shard %s is down; its users get errors until it is back", name)
                self._down[name] = time.monotonic()

    # user data: each call goes to the user's shard ---------------------------

    async def get_user(self, guid: str) -> User | None:
        """The user with ``guid``, or ``None`` (from the user's shard)."""
        if self.directory is None:
            return await super().get_user(guid)
        return await self.for_user(guid).get_user(guid)

    async def get_or_create_user(self, guid: str, *, new: bool = False) -> User:
        """The user with ``guid``, created in its shard when unknown (``new``: not looked up)."""
        if self.directory is None:
            return await super().get_or_create_user(guid, new=new)
        return await self.for_user(guid).get_or_create_user(guid, new=new)

    async def set_nickname(self, guid: str, nickname: str) -> bool:
        """Rename a user (in its shard)."""
        if self.directory is None:
            return await super().set_nickname(guid, nickname)
        return await self.for_user(guid).set_nickname(guid, nickname)

    async def set_banned(self, guid: str, banned: bool) -> bool:
        """Ban or unban a user (in its shard)."""
        if self.directory is None:
            return await super().set_banned(guid, banned)
        return await self.for_user(guid).set_banned(guid, banned)

    async def set_sysop(self, guid: str, is_sysop: bool) -> bool:
        """Grant or revoke sysop rights (in the user's shard)."""
        if self.directory is None:
            return await super().set_sysop(guid, is_sysop)
        return await self.for_user(guid).set_sysop(guid, is_sysop)

    async def recent_queries(self, guid: str, limit: int = 10) -> list[dict[str, Any]]:
        """The user's newest query rows (from its shard)."""
        if self.directory is None:
            return await super().recent_queries(guid, limit)
        return await self.for_user(guid).recent_queries(guid, limit)

    # sysop views: scatter-gather over the shards (rentahal.storage.views) -----

    async def list_users(self) -> list[User]:
        """Every user of every shard that answers, by nickname."""
        if self.directory is None:
            return await super().list_users()
        return await views.list_users(self)

    async def users_by_guid(self, guids: list[str]) -> list[User]:
        """The users among ``guids`` that exist (each asked of its shard)."""
        if self.directory is None:
            return await super().users_by_guid(guids)
        return await views.users_by_guid(self, guids)

    async def average_times(self) -> dict[str, float]:
        """Average processing time of completed queries per type, over every shard."""
        if self.directory is None:
            return await super().average_times()
        return await views.average_times(self)


def make_storage(settings: Settings) -> ShardedStorage:
    """The storage of ``settings``: the main database, sharded when realms.yml says so."""
    return ShardedStorage(
        settings.database.url,
        realms_file=Path(settings.broker.realms_file),
        node_id=settings.broker.resolved_node_id(),
    )
