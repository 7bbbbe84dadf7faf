"""config.ini reading, environment overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from rentahal.config import load_settings
from rentahal.errors import ConfigError

ORIGINAL_INI = """
[Settings]
debug = True
idle_watt_rate = 500
premium_watt_rate = 1000
electricity_cost_per_kwh = 0.25

[Database]
database_name = llm_broker.db

[Server]
host = 0.0.0.0
port = 5000

[Websocket]
max_message_size = 1048576

[Workers]
default_worker_address = localhost:8000
health_check_interval = 60
NO_BLACKLIST_IMAGINE = 1

[Performance]
max_connections = 100
query_timeout = 30

[Costs]
base_cost_per_query = 0.02
cost_per_second = 0.002

[Queue]
max_queue_size = 100
queue_timeout = 300

[Chunking]
chunk_size = 1048576
"""


def test_defaults_without_file() -> None:
    s = load_settings(None, environ={})
    assert (s.server.host, s.server.port) == ("0.0.0.0", 5000)
    assert s.costs.base_cost_per_query == 0.01 and s.costs.cost_per_second == 0.001
    assert s.workers.health_check_interval == 60 and s.workers.no_blacklist_imagine
    assert s.queue.max_queue_size == 100 and s.performance.query_timeout == 30
    assert s.database.url == "sqlite+aiosqlite:///llm_broker.db"


def test_original_ini_is_read_and_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text(ORIGINAL_INI)
    before = path.stat().st_mtime_ns, path.read_bytes()
    s = load_settings(path, environ={})
    assert s.general.debug is True
    assert s.costs.base_cost_per_query == 0.02
    assert s.workers.no_blacklist_imagine is True
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text(ORIGINAL_INI)
    s = load_settings(
        path, environ={"RENTAHAL_SERVER__PORT": "8080", "RENTAHAL_COSTS__COST_PER_SECOND": "0.5"}
    )
    assert s.server.port == 8080 and s.costs.cost_per_second == 0.5


def test_bad_value_names_section_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[Server]\nport = many\n")
    with pytest.raises(ConfigError, match=r"\[Server\] port: .*'many'"):
        load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"\[Costs\] cost_per_second"):
        load_settings(None, environ={"RENTAHAL_COSTS__COST_PER_SECOND": "-1"})


def test_unknown_environment_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="RENTAHAL_SERVER__PROT: no such setting"):
        load_settings(None, environ={"RENTAHAL_SERVER__PROT": "1"})


def test_unparseable_file(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("port = 5000\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_settings(path, environ={})


def test_postgres_url_gets_async_driver() -> None:
    s = load_settings(None, environ={"RENTAHAL_DATABASE__DATABASE_URL": "postgresql://u@h/db"})
    assert s.database.url == "postgresql+asyncpg://u@h/db"
