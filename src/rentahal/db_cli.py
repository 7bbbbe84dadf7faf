"""``rentahal db import|reshard|move|verify``: tools for the sharded layout (rich progress).

Each runs in the installation's directory against its ``config.ini`` (the
main database) and ``realms.yml``, also while the broker serves: moves hold
the moving prefixes' writes only for the final catch-up, then tell every node
(over Redis when ``[Broker] redis_url`` is set, else the nodes' own 2 s check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from sqlalchemy import func, select

from rentahal.config import Settings, load_settings
from rentahal.errors import ConfigError, StorageError
from rentahal.storage import tables as t
from rentahal.storage.importer import Importer, ImportReport
from rentahal.storage.moves import HOLD_S, Mover, MoveReport, plan_reshard
from rentahal.storage.prefixes import ALL_PREFIXES
from rentahal.storage.shards import ShardedStorage
from rentahal.storage.verify import Report, verify

console = Console()
ConfigOpt = typer.Option(Path("config.ini"), "--config", "-c", help="config.ini to read.")
HoldOpt = typer.Option(HOLD_S, help="Longest freeze of the moving prefixes' writes (lease, s).")
RateOpt = typer.Option(0.0, help="Copy at most this many rows per second (0: no limit).")
T = TypeVar("T")


def _settings(config: Path) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _run(config: Path, work: Callable[[ShardedStorage, Settings], Awaitable[T]]) -> T:
    """``work`` on the opened (migrated) storage of ``config``; errors end the command."""
    settings = _settings(config)

    async def run() -> T:
        storage = ShardedStorage(
            settings.database.url, realms_file=Path(settings.broker.realms_file), serve=False
        )
        try:
            await storage.migrate()
            return await work(storage, settings)
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except (StorageError, ConfigError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@contextmanager
def _bars() -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback drawing one rich bar per step."""
    tasks: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=False) as progress:

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total or 1)
            progress.update(tasks[step], completed=done if total else 1, total=total or 1)

        yield update


def _notifier(settings: Settings) -> Callable[[int], Awaitable[None]] | None:
    url = settings.broker.redis_url
    if not url:
        return None

    async def notify(version: int) -> None:
        from rentahal.broker.control import CONTROL_CHANNEL, ShardsChanged
        from rentahal.bus.redis import publish_once

        await publish_once(url, CONTROL_CHANNEL, ShardsChanged(version=version).model_dump())

    return notify


async def _counts(storage: ShardedStorage) -> dict[str, tuple[int, int]]:
    """Users and queries per shard (a shard that fails counts -1)."""
    out = {}
    for name, shard in storage.shards.items():
        try:
            async with shard.begin() as conn:
                users = (await conn.execute(select(func.count()).select_from(t.users))).scalar_one()
                rows = (
                    await conn.execute(select(func.count()).select_from(t.queries))
                ).scalar_one()
            out[name] = (int(users), int(rows))
        except StorageError:
            out[name] = (-1, -1)
    return out


def _print_move(
    report: MoveReport, before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> None:
    table = Table("shard", "users before", "queries before", "users after", "queries after")
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name, (0, 0)), after.get(name, (0, 0))
        table.add_row(name, str(b[0]), str(b[1]), str(a[0]), str(a[1]))
    console.print(table)
    console.print(
        f"moved {len(report.prefixes)} prefix(es) to {report.target}: {report.rows_copied} rows "
        f"copied, {report.caught_up} caught up, {report.users} users, {report.keys} keys; "
        f"writes of the moving prefixes waited at most {report.held_s * 1000:.0f} ms; "
        f"directory version {report.version}"
    )
    if report.lagging_nodes:
        console.print(
            "[yellow]nodes that did not confirm in time: "
            f"{', '.join(report.lagging_nodes)}[/yellow]"
        )
    if report.stragglers:
        console.print(
            f"[yellow]{report.stragglers} late row(s) carried to {report.target}[/yellow]"
        )


def add_db_commands(db_app: typer.Typer) -> None:
    """Add ``import``, ``reshard``, ``move`` and ``verify`` to ``rentahal db``."""

    @db_app.command("import")
    def db_import(path: Path, config: Path = ConfigOpt) -> None:
        """Import an original llm_broker.db into the shards (every row kept, totals checked)."""

        async def work(storage: ShardedStorage, _settings: Settings) -> ImportReport:
            with _bars() as bars:
                return await Importer(storage, progress=bars).run(path)

        report = _run(config, work)
        console.print(
            f"imported {report.users} users, {report.queries} queries, {report.keys} API keys, "
            f"{report.workers} workers, {report.models} models"
            + (f"; shards done before: {', '.join(report.skipped)}" if report.skipped else "")
        )
        for name, users in sorted(report.per_shard.items()):
            console.print(f"  {name}: {users} users")
        for note in report.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        for problem in report.problems:
            console.print(f"[red]problem:[/red] {problem}")
        if report.problems:
            raise typer.Exit(1)

    @db_app.command("reshard")
    def db_reshard(
        add: tuple[str, str] = typer.Option(
            ..., "--add", help="NAME CONNECTION_STRING of the new shard."
        ),
        hold_s: float = HoldOpt,
        max_rows_per_s: float = RateOpt,
        config: Path = ConfigOpt,
    ) -> None:
        """Add a shard and move a fair share of prefixes onto it (while serving)."""
        name, connection_string = add

        async def work(
            storage: ShardedStorage, settings: Settings
        ) -> tuple[MoveReport, dict[str, tuple[int, int]], dict[str, tuple[int, int]]] | None:
            if storage.directory is None:
                # Nodes running now write without fences: nothing moves before they restart.
                await storage.enable([(name, connection_string)], {})
                return None
            await storage.add_shard(name, connection_string)
            before = await _counts(storage)
            plan = plan_reshard(storage.directory, name)
            with _bars() as bars:
                mover = Mover(
                    storage,
                    hold_s=hold_s,
                    max_rows_per_s=max_rows_per_s or None,
                    notify=_notifier(settings),
                    progress=bars,
                )
                report = await mover.move(plan, name)
            return report, before, await _counts(storage)

        done = _run(config, work)
        if done is None:
            console.print(
                f"sharding is on (shard {name} registered, the directory written; users already "
                "in the main database stay there). Restart every node, then run this command "
                "again to move prefixes."
            )
            return
        _print_move(*done)

    @db_app.command("move")
    def db_move(
        prefix: str,
        shard: str,
        hold_s: float = HoldOpt,
        max_rows_per_s: float = RateOpt,
        config: Path = ConfigOpt,
    ) -> None:
        """Move one GUID prefix (two hex digits, or '*') to SHARD (while serving)."""
        prefix = prefix.lower()
        if prefix not in ALL_PREFIXES:
            console.print(f"[red]not a prefix: {prefix!r} (two hex digits, or '*')[/red]")
            raise typer.Exit(2)

        async def work(
            storage: ShardedStorage, settings: Settings
        ) -> tuple[MoveReport, dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
            before = await _counts(storage)
            with _bars() as bars:
                mover = Mover(
                    storage,
                    hold_s=hold_s,
                    max_rows_per_s=max_rows_per_s or None,
                    notify=_notifier(settings),
                    progress=bars,
                )
                report = await mover.move([prefix], shard)
            return report, before, await _counts(storage)

        report, before, after = _run(config, work)
        _print_move(report, before, after)

    @db_app.command("verify")
    def db_verify(config: Path = ConfigOpt) -> None:
        """Check every shard against the directory and the totals; exit 1 on a problem."""

        async def work(storage: ShardedStorage, _settings: Settings) -> Report:
            return await verify(storage)

        report = _run(config, work)
        table = Table(
            "shard", "prefixes", "users", "queries", "keys", "charged", "time (s)", "cost"
        )
        for shard in report.shards:
            c = shard.counter
            table.add_row(
                shard.name,
                str(shard.prefixes),
                str(shard.users),
                str(shard.queries),
                str(shard.keys),
                str(c.queries),
                f"{c.processing_time:.3f}",
                f"{c.cost:.6f}",
            )
        if report.shards:
            console.print(table)
            s = report.system
            console.print(
                f"system totals: {s.queries} queries, {s.processing_time:.3f} s, ${s.cost:.6f}"
            )
        for note in report.notes:
            console.print(f"note: {note}")
        for kind, text in report.problems:
            console.print(f"[red]{kind}:[/red] {text}")
        if not report.ok:
            console.print(f"[red]{len(report.problems)} problem(s)[/red]")
            raise typer.Exit(1)
        console.print("[green]verify: no problems[/green]")
