"""``rentahal db verify``: every shard against the directory and the totals.

Problems found (each makes the command exit non-zero):

- ``unreachable``: a shard in use does not answer;
- ``wrong shard``: users, queries or keys of a prefix in a shard the
  directory does not name (rows of a prefix whose move is under way are
  reported as ``moving`` instead, not as a problem);
- ``duplicate job``: a job id recorded in two shards;
- ``duplicate user``: a GUID with a user row in two shards;
- ``fence``: a shard's fence disagrees with the directory (a prefix it should
  own is not open to it, or one it should not own is);
- ``shard totals``: a shard's counter is not the sum of its charged rows;
- ``system totals``: ``system_stats`` is not the base plus the shard
  counters minus the batches still in an outbox (checked twice, a second
  apart, so a write in flight is not a problem);
- ``key index``: an API key row without an index entry, or an entry whose
  key row is missing in the user's shard.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select

from rentahal.storage import fences, totals
from rentahal.storage import tables as t
from rentahal.storage.prefixes import MAIN, prefix_of
from rentahal.storage.shards import ShardedStorage
from rentahal.storage.totals import Delta

_SHOWN = 5  # examples named per problem


@dataclass(slots=True)
class ShardFigures:
    """Row counts of one shard, for the report."""

    name: str
    prefixes: int = 0
    users: int = 0
    queries: int = 0
    keys: int = 0
    counter: Delta = field(default_factory=Delta)


@dataclass(slots=True)
class Report:
    """What ``db verify`` found."""

    shards: list[ShardFigures] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    system: Delta = field(default_factory=Delta)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def problem(self, kind: str, text: str) -> None:
        """Add a problem."""
        self.problems.append((kind, text))


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


async def verify(storage: ShardedStorage) -> Report:
    """Check the sharded layout of ``storage`` (opened, not serving); the report."""
    report = Report()
    await storage.sync(report=False)
    directory = storage.directory
    if directory is None:
        report.notes.append("the installation is not sharded: nothing to check")
        return report
    moving = set(directory.moves)
    for prefix, move in sorted(directory.moves.items()):
        report.notes.append(
            f"prefix {prefix} is moving {move.source} -> {move.target} ({move.phase})"
        )
    jobs: dict[str, set[str]] = {}
    guids: dict[str, set[str]] = {}
    key_rows: dict[str, set[tuple[str, str]]] = {}
    counters: dict[str, Delta] = {}
    in_use = set(directory.in_use())
    names = sorted(set(storage.shards) - ({MAIN} - in_use))
    for name in names:
        shard = storage.shards[name]
        figures = ShardFigures(name, prefixes=len(directory.owned_by(name)))
        report.shards.append(figures)
        try:
            async with asyncio.timeout(60), shard.begin() as conn:
                users: list[str] = list((await conn.execute(select(t.users.c.guid))).scalars())
                queries = (
                    await conn.execute(select(t.queries.c.user_guid, t.queries.c.job_id))
                ).all()
                keys = (
                    await conn.execute(select(t.api_keys.c.key_hash, t.api_keys.c.user_guid))
                ).all()
                fence_rows = await fences.read(conn, list(directory.owners))
                now = await fences.db_now(conn)
                owned = directory.owned_by(name)
                counters[name] = counter = await totals.read(conn, t.shard_totals)
                rows = await totals.charged(conn, owned) if owned else Delta()
        except Exception as exc:
            if name in in_use:
                report.problem("unreachable", f"shard {name}: {exc}")
            else:
                report.notes.append(f"shard {name} (holds nothing) does not answer: {exc}")
            continue
        figures.users, figures.queries, figures.keys = len(users), len(queries), len(keys)
        figures.counter = counter
        if owned and not counter.close_to(rows):
            report.problem(
                "shard totals",
                f"shard {name}: counter {counter} but its charged rows sum to {rows}",
            )
        elif not owned and counter.queries:
            report.problem("shard totals", f"shard {name} holds no prefix but counts {counter}")
        row_guids = [*users, *(q.user_guid for q in queries), *(k.user_guid for k in keys)]
        _check_placement(report, name, directory.owners, moving, row_guids)
        _check_fences(report, name, directory.owners, moving, fence_rows, now)
        jobs[name] = {
            q.job_id for q in queries if q.job_id and prefix_of(q.user_guid or "") not in moving
        }
        guids[name] = set(users)
        key_rows[name] = {(k.key_hash, k.user_guid) for k in keys}
    _check_duplicates(report, jobs, guids, moving)
    await _check_keys(report, storage, key_rows, directory.owners)
    reached = [n for n in names if n in counters]
    if len(reached) == len(names):
        await _check_system(report, storage, reached)
    else:
        report.notes.append("system totals not checked: a shard did not answer")
    return report


def _check_placement(
    report: Report,
    name: str,
    owners: dict[str, str],
    moving: set[str],
    guids: list[str | None],
) -> None:
    misplaced: Counter[str] = Counter()
    for guid in guids:
        prefix = prefix_of(guid or "")
        if owners.get(prefix, owners["*"]) != name and prefix not in moving:
            misplaced[prefix] += 1
    for prefix, count in sorted(misplaced.items()):
        report.problem(
            "wrong shard",
            f"shard {name} holds {count} row(s) of prefix {prefix}, "
            f"which the directory puts in {owners.get(prefix, owners['*'])}",
        )


def _check_fences(
    report: Report,
    name: str,
    owners: dict[str, str],
    moving: set[str],
    fence_rows: list[fences.Fence],
    now: float,
) -> None:
    by_prefix = {f.prefix: f for f in fence_rows}
    closed = [
        p
        for p, owner in owners.items()
        if owner == name
        and p not in moving
        and (p not in by_prefix or not by_prefix[p].open_at(now))
    ]
    if closed:
        report.problem(
            "fence", f"shard {name} refuses writes of its own prefixes {_examples(closed)}"
        )
    stray = [
        f.prefix
        for f in fence_rows
        if owners.get(f.prefix) != name and f.prefix not in moving and f.moved_to is None
    ]
    if stray:
        report.problem(
            "fence", f"shard {name} takes writes of other shards' prefixes {_examples(stray)}"
        )


def _check_duplicates(
    report: Report, jobs: dict[str, set[str]], guids: dict[str, set[str]], moving: set[str]
) -> None:
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for name, ids in jobs.items():
        for job_id in ids:
            seen[job_id].append(name)
    twice = sorted(j for j, where in seen.items() if len(where) > 1)
    if twice:
        report.problem("duplicate job", f"{len(twice)} job id(s) in two shards: {_examples(twice)}")
    owners: defaultdict[str, list[str]] = defaultdict(list)
    for name, users in guids.items():
        for guid in users:
            owners[guid].append(name)
    doubled = sorted(
        g for g, where in owners.items() if len(where) > 1 and prefix_of(g) not in moving
    )
    if doubled:
        report.problem(
            "duplicate user", f"{len(doubled)} user(s) in two shards: {_examples(doubled)}"
        )


async def _check_keys(
    report: Report,
    storage: ShardedStorage,
    key_rows: dict[str, set[tuple[str, str]]],
    owners: dict[str, str],
) -> None:
    async with storage.begin() as conn:
        index = {
            r.key_hash: r.user_guid for r in (await conn.execute(select(t.api_key_index))).all()
        }
    rows = {key_hash: guid for found in key_rows.values() for key_hash, guid in found}
    unindexed = sorted(h[:8] for h in rows if h not in index)
    if unindexed:
        report.problem("key index", f"{len(unindexed)} API key(s) missing from the index")
    readable = {n for n in key_rows}
    dangling = [
        h[:8]
        for h, guid in index.items()
        if h not in rows and owners.get(prefix_of(guid), owners["*"]) in readable
    ]
    if dangling:
        report.notes.append(
            f"{len(dangling)} index entr(ies) without a key row (a creation that did not finish)"
        )


async def _shard_sums(storage: ShardedStorage, names: list[str]) -> tuple[Delta, Delta]:
    """The shard counters summed, and the outbox batches main has not applied."""
    counted, pending = Delta(), Delta()
    for name in names:
        async with storage.shards[name].begin() as conn:
            counted += await totals.read(conn, t.shard_totals)
            if name != MAIN:
                async with storage.begin() as main_conn:
                    pending += await totals.pending(conn, main_conn)
    return counted, pending


async def _check_system(report: Report, storage: ShardedStorage, names: list[str]) -> None:
    for attempt in range(2):
        counted, pending = await _shard_sums(storage, names)
        async with storage.begin() as conn:
            system = await totals.read(conn, t.system_stats)
            base = await totals.read(conn, t.totals_base)
        expected = base + counted - pending
        report.system = system
        if system.close_to(expected):
            return
        if attempt == 0:
            await asyncio.sleep(1.0)
    report.problem(
        "system totals",
        f"system_stats is {system}, but base {base} + shard counters {counted} "
        f"- batches waiting in outboxes {pending} gives {expected}",
    )
