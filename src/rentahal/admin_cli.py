"""``rentahal realms|pools|workers``: manage a running broker through its admin API."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from rentahal.config import load_settings
from rentahal.errors import ConfigError

realms_app = typer.Typer(help="Realms of a running broker", no_args_is_help=True)
pools_app = typer.Typer(help="Worker pools of a running broker", no_args_is_help=True)
workers_app = typer.Typer(help="Workers of a running broker", no_args_is_help=True)
console = Console()

DEFAULT_URL = "http://127.0.0.1:5000"
TIMEOUT_S = 15.0

UrlOpt = typer.Option(
    None, "--url", help=f"The broker's base URL (env RENTAHAL_URL, default {DEFAULT_URL})."
)
TokenOpt = typer.Option(
    None,
    "--token",
    help="Admin token (env RENTAHAL_ADMIN_TOKEN, else [Security] admin_token of --config).",
)
ConfigOpt = typer.Option(Path("config.ini"), "--config", "-c", help="config.ini to read.")


class _Target:
    """Where the admin calls go and how they authenticate."""

    def __init__(self, url: str | None, token: str | None, config: Path) -> None:
        self.url = (url or os.environ.get("RENTAHAL_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("RENTAHAL_ADMIN_TOKEN") or ""
        if not self.token:
            try:
                self.token = load_settings(config).security.admin_token
            except ConfigError as exc:
                console.print(f"[red]configuration error:[/red] {exc}")
                raise typer.Exit(2) from exc
        if not self.token:
            console.print(
                "[red]no admin token:[/red] pass --token, set RENTAHAL_ADMIN_TOKEN, "
                "or set [Security] admin_token in config.ini"
            )
            raise typer.Exit(2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One admin request; prints the broker's error and exits non-zero on failure."""

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT_S) as client:
                return await client.request(
                    method, path, json=body, headers={"X-Admin-Token": self.token}
                )

        try:
            response = asyncio.run(run())
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach the broker at {self.url}:[/red] {exc}")
            raise typer.Exit(1) from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            console.print(f"[red]{response.status_code}:[/red] {detail}")
            raise typer.Exit(1)
        return response.json() if response.content else None


def _options(**values: Any) -> dict[str, Any]:
    """The options the user gave (``None`` and empty lists mean "not given")."""
    return {k: v for k, v in values.items() if v is not None and v != []}


def _print_realms(realms: list[dict[str, Any]]) -> None:
    table = Table(title="Realms")
    for column in ("name", "type", "workers", "min", "max", "strategy", "backups", "state"):
        table.add_column(column)
    for realm in realms:
        table.add_row(
            realm["name"],
            realm["primary_query_type"],
            str(len(realm.get("workers", []))),
            str(realm["min_workers"]),
            str(realm["max_workers"]),
            realm["strategy"],
            ", ".join(realm["backup_realms"]) or "-",
            ("stopped" if realm["stopped"] else "running")
            + (" (primary)" if realm.get("is_primary") else ""),
        )
    Console().print(table)  # made now: the terminal's width at this call


@realms_app.command("list")
def realms_list(
    url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Every realm with its bounds, strategy, backups and state."""
    _print_realms(_Target(url, token, config).call("GET", "/api/admin/realms")["realms"])


_TypeOpt = typer.Option(None, "--type", "-t", help="chat, vision, imagine or speech.")
_MinOpt = typer.Option(None, "--min-workers", help="Fewest workers the realm keeps.")
_MaxOpt = typer.Option(None, "--max-workers", help="Most workers the realm may have.")
_StrategyOpt = typer.Option(None, "--strategy", help="health, round_robin, least_busy, random.")
_BackupOpt = typer.Option([], "--backup", help="A backup realm (repeatable).")
_ThresholdOpt = typer.Option(None, "--queue-threshold", help="Queue depth that sends to backups.")
_DescriptionOpt = typer.Option(None, "--description", help="Free text.")


@realms_app.command("create")
def realms_create(
    name: str,
    query_type: str = typer.Option(..., "--type", "-t", help="chat, vision, imagine or speech."),
    min_workers: int | None = _MinOpt,
    max_workers: int | None = _MaxOpt,
    strategy: str | None = _StrategyOpt,
    backup: list[str] = _BackupOpt,
    queue_threshold: int | None = _ThresholdOpt,
    description: str | None = _DescriptionOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    config: Path = ConfigOpt,
) -> None:
    """Create a realm (its name starts with '$')."""
    body = _options(
        name=name,
        primary_query_type=query_type,
        min_workers=min_workers,
        max_workers=max_workers,
        strategy=strategy,
        backup_realms=backup,
        queue_threshold=queue_threshold,
        description=description,
    )
    _print_realms([_Target(url, token, config).call("POST", "/api/admin/realms", body)])


@realms_app.command("update")
def realms_update(
    name: str,
    query_type: str | None = _TypeOpt,
    min_workers: int | None = _MinOpt,
    max_workers: int | None = _MaxOpt,
    strategy: str | None = _StrategyOpt,
    backup: list[str] = _BackupOpt,
    queue_threshold: int | None = _ThresholdOpt,
    description: str | None = _DescriptionOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    config: Path = ConfigOpt,
) -> None:
    """Change the given settings of a realm; the others keep their values."""
    body = _options(
        primary_query_type=query_type,
        min_workers=min_workers,
        max_workers=max_workers,
        strategy=strategy,
        backup_realms=backup,
        queue_threshold=queue_threshold,
        description=description,
    )
    if not body:
        console.print("[red]nothing to change:[/red] give at least one option")
        raise typer.Exit(2)
    _print_realms([_Target(url, token, config).call("PUT", f"/api/admin/realms/{name}", body)])


@realms_app.command("stop")
def realms_stop(
    name: str, url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Stop a realm; its waiting queries go to its backups (or the legacy queue)."""
    body = {"stopped": True}
    _print_realms([_Target(url, token, config).call("PUT", f"/api/admin/realms/{name}", body)])


@realms_app.command("resume")
def realms_resume(
    name: str, url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Resume a stopped realm."""
    body = {"stopped": False}
    _print_realms([_Target(url, token, config).call("PUT", f"/api/admin/realms/{name}", body)])


@realms_app.command("delete")
def realms_delete(
    name: str, url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Delete a realm that is not a primary realm; its waiting queries are re-routed."""
    _Target(url, token, config).call("DELETE", f"/api/admin/realms/{name}")
    console.print(f"realm {name} deleted")


def _print_pools(pools: list[dict[str, Any]]) -> None:
    table = Table(title="Pools")
    for column in ("name", "type", "realm", "members", "strategy", "blacklisted"):
        table.add_column(column)
    for pool in pools:
        table.add_row(
            pool["name"],
            pool["query_type"],
            pool.get("realm") or "-",
            ", ".join(pool["members"]) or "-",
            pool["strategy"],
            "yes" if pool["blacklisted"] else "no",
        )
    Console().print(table)  # made now: the terminal's width at this call


_MemberOpt = typer.Option([], "--member", "-m", help="A worker of the pool (repeatable).")
_RealmOpt = typer.Option(None, "--realm", help="The realm the pool belongs to.")


@pools_app.command("list")
def pools_list(
    url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Every pool alias."""
    _print_pools(_Target(url, token, config).call("GET", "/api/admin/pools")["pools"])


@pools_app.command("create")
def pools_create(
    name: str,
    query_type: str = typer.Option(..., "--type", "-t", help="chat, vision, imagine or speech."),
    member: list[str] = _MemberOpt,
    strategy: str | None = _StrategyOpt,
    realm: str | None = _RealmOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    config: Path = ConfigOpt,
) -> None:
    """Create a pool: queries whose model_name is NAME run on its members."""
    body = _options(
        name=name, query_type=query_type, members=member, strategy=strategy, realm=realm
    )
    _print_pools([_Target(url, token, config).call("POST", "/api/admin/pools", body)])


@pools_app.command("update")
def pools_update(
    name: str,
    query_type: str | None = _TypeOpt,
    member: list[str] = _MemberOpt,
    strategy: str | None = _StrategyOpt,
    realm: str | None = _RealmOpt,
    blacklisted: bool | None = typer.Option(None, "--blacklisted/--not-blacklisted"),
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    config: Path = ConfigOpt,
) -> None:
    """Change the given settings of a pool (``--member`` replaces the member list)."""
    body = _options(
        query_type=query_type,
        members=member,
        strategy=strategy,
        realm=realm,
        blacklisted=blacklisted,
    )
    if not body:
        console.print("[red]nothing to change:[/red] give at least one option")
        raise typer.Exit(2)
    _print_pools([_Target(url, token, config).call("PUT", f"/api/admin/pools/{name}", body)])


@pools_app.command("delete")
def pools_delete(
    name: str, url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Remove a pool alias."""
    _Target(url, token, config).call("DELETE", f"/api/admin/pools/{name}")
    console.print(f"pool {name} deleted")


def _print_workers(workers: list[dict[str, Any]]) -> None:
    table = Table(title="Workers")
    for column in ("name", "address", "type", "protocol", "health", "circuit", "load", "models"):
        table.add_column(column)
    for worker in workers:
        table.add_row(
            worker["name"],
            worker["address"],
            worker["type"],
            worker.get("protocol") or "-",
            f"{worker['health_score']:.0f}" + (" blacklisted" if worker["is_blacklisted"] else ""),
            str(worker.get("circuit", "-")),
            f"{worker.get('in_flight', 0)}/{worker.get('max_concurrency', 1)}",
            ", ".join(worker.get("models") or []) or "-",
        )
    Console().print(table)  # made now: the terminal's width at this call


@workers_app.command("list")
def workers_list(
    url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Every worker with health, circuit and load."""
    _print_workers(_Target(url, token, config).call("GET", "/api/admin/workers")["workers"])


@workers_app.command("add")
def workers_add(
    name: str,
    address: str = typer.Argument(..., help="host:port of the worker (no scheme)."),
    query_type: str = typer.Option(..., "--type", "-t", help="chat, vision, imagine or speech."),
    protocol: str | None = typer.Option(
        None, "--protocol", help="predict, a1111, ollama, openai, claude or huggingface."
    ),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="Calls at once."),
    model: list[str] = typer.Option([], "--model", help="A model it serves (repeatable)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Sent to the worker only."),
    realm: str | None = _RealmOpt,
    url: str | None = UrlOpt,
    token: str | None = TokenOpt,
    config: Path = ConfigOpt,
) -> None:
    """Add a worker (or replace the one of the same name)."""
    body = _options(
        name=name,
        address=address,
        type=query_type,
        protocol=protocol,
        max_concurrency=max_concurrency,
        models=model,
        api_key=api_key,
        realm=realm,
    )
    _print_workers([_Target(url, token, config).call("POST", "/api/admin/workers", body)])


@workers_app.command("remove")
def workers_remove(
    name: str, url: str | None = UrlOpt, token: str | None = TokenOpt, config: Path = ConfigOpt
) -> None:
    """Remove a worker; calls running on it finish."""
    _Target(url, token, config).call("DELETE", f"/api/admin/workers/{name}")
    console.print(f"worker {name} removed")


token_app = typer.Typer(help="Tokens for workers that register themselves", no_args_is_help=True)
workers_app.add_typer(token_app, name="token")


def _with_tokens(config: Path, work: Any) -> Any:
    """Run ``work(WorkerTokens)`` on the database of ``config`` (migrated)."""
    from rentahal.keys_cli import with_storage
    from rentahal.realms.registration import WorkerTokens

    return with_storage(config, lambda storage: work(WorkerTokens(storage)))


@token_app.command("create")
def token_create(
    realm: str | None = typer.Option(None, "--realm", help="Workers join this realm."),
    query_type: str | None = typer.Option(None, "--type", "-t", help="Workers of this type."),
    name: str = typer.Option("", "--name", "-n", help="A label for the token."),
    config: Path = ConfigOpt,
) -> None:
    """Issue a worker token (printed once), scoped to a realm or a query type."""
    if realm is None and query_type is None:
        console.print("[red]give --realm or --type[/red]")
        raise typer.Exit(2)

    async def work(tokens: Any) -> str:
        token, _record = await tokens.create(name=name, realm=realm, query_type=query_type)
        return str(token)

    token = _with_tokens(config, work)
    console.print("worker token (shown once; pass it as --token or RENTAHAL_WORKER_TOKEN):")
    print(token)


@token_app.command("list")
def token_list(config: Path = ConfigOpt) -> None:
    """Every worker token (prefixes only)."""

    async def work(tokens: Any) -> list[Any]:
        return list(await tokens.list())

    table = Table(title="Worker tokens")
    for column in ("prefix", "name", "realm", "type", "state"):
        table.add_column(column)
    for record in _with_tokens(config, work):
        table.add_row(
            record.prefix,
            record.name or "-",
            record.realm or "-",
            record.query_type or "-",
            "revoked" if record.revoked else "active",
        )
    Console().print(table)


@token_app.command("revoke")
def token_revoke(prefix: str, config: Path = ConfigOpt) -> None:
    """Revoke a worker token; the workers it registered are removed."""

    async def work(tokens: Any) -> bool:
        return bool(await tokens.revoke(prefix))

    if not _with_tokens(config, work):
        console.print(f"[red]no worker token {prefix}[/red]")
        raise typer.Exit(1)
    console.print(f"worker token {prefix} revoked")
