"""``rentahal keys``: create, list and revoke API keys of the HTTP API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rentahal.config import load_settings
from rentahal.errors import ConfigError
from rentahal.models import is_valid_guid
from rentahal.storage.database import Storage
from rentahal.storage.keys import KeyStore
from rentahal.storage.shards import ShardedStorage

keys_app = typer.Typer(help="API keys for the HTTP API", no_args_is_help=True)
console = Console()

ConfigOpt = typer.Option(Path("config.ini"), "--config", "-c", help="config.ini to read.")

T = TypeVar("T")


def with_storage(config: Path, work: Callable[[Storage], Awaitable[T]]) -> T:
    """Run ``work`` on a migrated storage of ``config``'s database (and its shards)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc

    async def run() -> T:
        realms_file = Path(settings.broker.realms_file)
        storage = ShardedStorage(settings.database.url, realms_file=realms_file, serve=False)
        try:
            await storage.migrate()
            return await work(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(
    guid: str,
    name: str = typer.Option("", "--name", "-n", help="A label to recognise the key by."),
    config: Path = ConfigOpt,
) -> None:
    """Make an API key for user GUID; the key is printed once and never again."""
    if not is_valid_guid(guid):
        console.print(f"[red]not a user GUID: {guid}[/red]")
        raise typer.Exit(1)

    async def work(storage: Storage) -> str | None:
        if await storage.get_user(guid) is None:
            return None
        return (await KeyStore(storage).create(guid, name)).key

    key = with_storage(config, work)
    if key is None:
        console.print(f"[red]no user {guid}[/red]")
        raise typer.Exit(1)
    console.print("API key (shown only now; store it safely):", style="bold")
    # A plain print, so the key can be captured by scripts without markup.
    print(key)


@keys_app.command("list")
def keys_list(guid: str, config: Path = ConfigOpt) -> None:
    """List user GUID's keys (prefix, name, creation time, state)."""
    keys = with_storage(config, lambda storage: KeyStore(storage).list_keys(guid))
    if not keys:
        console.print(f"no API keys for {guid}")
        return
    table = Table("prefix", "name", "created (UTC)", "state")
    for key in keys:
        table.add_row(key.prefix, key.name, key.created_at, "revoked" if key.revoked else "live")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str, config: Path = ConfigOpt) -> None:
    """Revoke the key with PREFIX (whoever owns it)."""
    if not with_storage(config, lambda storage: KeyStore(storage).revoke(prefix)):
        console.print(f"[red]no live key with prefix {prefix}[/red]")
        raise typer.Exit(1)
    redis_url = load_settings(config).broker.redis_url
    if redis_url:  # every node's key cache forgets the key at once
        from rentahal.broker.control import CONTROL_CHANNEL, KeyRevoked
        from rentahal.bus.redis import publish_once

        message = KeyRevoked(prefix=prefix).model_dump()
        asyncio.run(publish_once(redis_url, CONTROL_CHANNEL, message))
    console.print(f"key {prefix} revoked")
