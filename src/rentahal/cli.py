"""The ``rentahal`` command: serve, demo, worker, db, users."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

import typer
import uvicorn
from rich.console import Console

from rentahal.admin_cli import pools_app, realms_app, workers_app
from rentahal.bench import bench_app
from rentahal.config import Settings, load_settings
from rentahal.db_cli import add_db_commands
from rentahal.errors import ConfigError
from rentahal.keys_cli import keys_app
from rentahal.lifecycle import exit_on_signals
from rentahal.worker.cli import worker_command

app = typer.Typer(help="RENT-A-HAL realm broker", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database maintenance", no_args_is_help=True)
users_app = typer.Typer(help="User administration", no_args_is_help=True)
add_db_commands(db_app)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(bench_app, name="bench")
app.add_typer(realms_app, name="realms")
app.add_typer(pools_app, name="pools")
app.add_typer(workers_app, name="workers")
app.command("worker")(worker_command)
console = Console()

# How long a stopping node waits for open connections before closing them.
GRACEFUL_SHUTDOWN_S = 10

ConfigOpt = typer.Option(Path("config.ini"), "--config", "-c", help="config.ini to read.")


def _settings(config: Path, **overrides: dict[str, Any]) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per worker call is too much at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class _QuietSockets(logging.Filter):
    """Drops uvicorn's INFO lines of every WebSocket (accepted, open, closed).

    Three lines per socket were ~5% of a connect's CPU; they go with the access
    log (``[Server] access_log``), which is off by default.
    """

    LINES = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.LINES


def server_stack() -> tuple[str, str]:
    """uvicorn's ``(loop, http)``: uvloop and httptools where installed, else asyncio and h11.

    Both come with ``uvicorn[standard]``; uvloop is missing on Windows and PyPy.
    """
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return loop, http


def _run_server(settings: Settings) -> None:
    from rentahal.app import create_app

    loop, http = server_stack()
    if not settings.server.access_log:
        logging.getLogger("uvicorn.error").addFilter(_QuietSockets())
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop=loop,
        http=http,
        log_level="info",
        access_log=settings.server.access_log,
        ws_max_size=4 * (settings.websocket.max_message_size + 16 * 1024),
        ws_ping_interval=None,
        ws_per_message_deflate=settings.websocket.per_message_deflate,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # X-Forwarded-* are believed only from [Security] trusted_proxies, by the app.
        proxy_headers=False,
    )


@app.command()
def serve(
    config: Path = ConfigOpt,
    host: str | None = typer.Option(None, help="Listen address (default from config)."),
    port: int | None = typer.Option(None, help="Listen port (default from config)."),
    database_url: str | None = typer.Option(None, help="SQLAlchemy URL instead of SQLite."),
    redis: str | None = typer.Option(None, "--redis", help="Redis URL for multi-node mode."),
    node_id: str | None = typer.Option(None, help="This node's id (generated if unset)."),
) -> None:
    """Run the broker."""
    settings = _settings(
        config,
        server={"host": host, "port": port},
        database={"database_url": database_url},
        broker={"redis_url": redis, "node_id": node_id},
    )
    _logging(settings.general.debug)
    with exit_on_signals():  # SIGTERM/SIGINT: graceful shutdown, exit code 0
        _run_server(settings)


@app.command()
def demo(
    config: Path = ConfigOpt,
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int | None = typer.Option(None, help="Listen port (default from config: 5000)."),
    latency_ms: float = typer.Option(0.0, help="Simulated model time of the demo workers."),
) -> None:
    """Run the broker with one demo worker per query type (Ctrl-C or SIGTERM stops all)."""
    from rentahal.demo import demo_workers
    from rentahal.storage.database import Storage

    settings = _settings(config, server={"host": host, "port": port})
    _logging(settings.general.debug)

    async def register(workers: list[Any]) -> None:
        storage = Storage(settings.database.url)
        try:
            await storage.migrate()
            for worker in workers:
                await storage.save_worker(worker)
        finally:
            await storage.close()

    # The handlers come first: a signal during start-up also stops the workers.
    with exit_on_signals(), demo_workers(latency_ms=latency_ms) as workers:
        asyncio.run(register(workers))
        for w in workers:
            console.print(f"demo worker [bold]{w.name}[/bold] ({w.protocol}) on {w.address}")
        console.print(
            f"[green]open http://{settings.server.host}:{settings.server.port}/ "
            "in a browser[/green]"
        )
        _run_server(settings)


@db_app.command("upgrade")
def db_upgrade(config: Path = ConfigOpt) -> None:
    """Create or migrate the database and its shards (an original llm_broker.db in place)."""
    from rentahal.storage.shards import ShardedStorage

    settings = _settings(config)

    async def run() -> None:
        realms_file = Path(settings.broker.realms_file)
        storage = ShardedStorage(settings.database.url, realms_file=realms_file, serve=False)
        try:
            await storage.migrate()
        finally:
            await storage.close()

    asyncio.run(run())
    console.print(f"database at {settings.database.url} is up to date")


@users_app.command("sysop")
def users_sysop(
    guid: str,
    revoke: bool = typer.Option(False, help="Take sysop rights away instead."),
    config: Path = ConfigOpt,
) -> None:
    """Grant (or revoke) sysop rights: the only way besides the first-user rule."""
    from rentahal.storage.shards import ShardedStorage

    settings = _settings(config)

    async def run() -> bool:
        realms_file = Path(settings.broker.realms_file)
        storage = ShardedStorage(settings.database.url, realms_file=realms_file, serve=False)
        try:
            await storage.migrate()
            if not await storage.set_sysop(guid, not revoke):
                return False
        finally:
            await storage.close()
        if settings.broker.redis_url:  # open sockets on every node learn it at once
            from rentahal.broker.control import CONTROL_CHANNEL, Sysop
            from rentahal.bus.redis import publish_once

            message = Sysop(guid=guid, is_sysop=not revoke).model_dump()
            await publish_once(settings.broker.redis_url, CONTROL_CHANNEL, message)
        return True

    if not asyncio.run(run()):
        console.print(f"[red]no user {guid}[/red]")
        raise typer.Exit(1)
    console.print(f"{guid} is {'no longer ' if revoke else ''}a sysop")


if __name__ == "__main__":
    app()
