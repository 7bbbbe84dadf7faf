"""Sharded installations for tests: realms.yml, config.ini, the `rentahal db` command, rows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from rentahal.storage.directory import shard_url

RENTAHAL = str(Path(sys.executable).parent / "rentahal")


def guid_with(prefix: str) -> str:
    """A random user GUID starting with the two hex digits ``prefix``."""
    return prefix + str(uuid.uuid4())[2:]


def write_installation(home: Path, shards: list[tuple[str, str]], **realms: Any) -> Path:
    """``realms.yml`` (sharding over ``shards``: name, connection string) and ``config.ini``.

    The broker of ``broker_settings(home)`` and the ``rentahal db`` command both use them.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "shards").mkdir(exist_ok=True)
    sharding = {
        "enabled": True,
        "shards": [{"name": n, "connection_string": c} for n, c in shards],
    }
    (home / "realms.yml").write_text(
        yaml.safe_dump({"database_sharding": sharding, **realms}), encoding="utf-8"
    )
    config = home / "config.ini"
    config.write_text(
        f"[Database]\ndatabase_name = {home / 'llm_broker.db'}\n"
        f"[Broker]\nrealms_file = {home / 'realms.yml'}\n",
        encoding="utf-8",
    )
    return config


def url_of(home: Path, connection_string: str) -> str:
    """The async SQLAlchemy URL of a shard's connection string, as the broker resolves it."""
    return shard_url(connection_string, home)


def db_command(home: Path, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``rentahal db ARGS`` in the installation ``home``; its result."""
    return subprocess.run(
        [RENTAHAL, "db", *args, "--config", str(home / "config.ini")],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "COLUMNS": "200"},
    )


async def db_process(home: Path, *args: str) -> asyncio.subprocess.Process:
    """Start ``rentahal db ARGS`` in ``home`` (stdout and stderr piped together)."""
    return await asyncio.create_subprocess_exec(
        RENTAHAL,
        "db",
        *args,
        "--config",
        str(home / "config.ini"),
        cwd=home,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )


async def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of one SQL query on the database at ``url``."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


async def all_queries(urls: dict[str, str]) -> dict[str, list[tuple[Any, ...]]]:
    """Per shard: (job_id, user_guid, prompt, status, processing_time, cost) of every query."""
    return {
        name: await rows(
            url, "SELECT job_id, user_guid, prompt, status, processing_time, cost FROM queries"
        )
        for name, url in urls.items()
    }
