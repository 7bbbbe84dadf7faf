"""``rentahal realms|pools|workers`` against a running broker (admin token)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from rentahal.cli import app
from tests.conftest import BrokerFactory
from tests.support.servers import BrokerServer, demo_worker_records

TOKEN = "cli-admin-token-0123456789"


@pytest.fixture
def admin_broker(broker_factory: BrokerFactory, ref_workers: dict[str, str]) -> BrokerServer:
    return broker_factory(demo_worker_records(ref_workers), security={"admin_token": TOKEN})


def _cli(broker: BrokerServer, *args: str, token: str = TOKEN) -> tuple[int, str]:
    # A wide terminal, so table cells are not shortened.
    result = CliRunner().invoke(
        app,
        [*args, "--url", broker.url, "--token", token],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    return result.exit_code, result.output


def _admin(broker: BrokerServer, path: str) -> dict[str, object]:
    answer = httpx.get(f"{broker.url}{path}", headers={"X-Admin-Token": TOKEN}, timeout=10)
    return answer.json()  # type: ignore[no-any-return]


def test_realms_lifecycle_from_the_command_line(admin_broker: BrokerServer) -> None:
    code, out = _cli(admin_broker, "realms", "list")
    assert code == 0 and "$CHAT" in out and "$IMAGINE" in out
    code, out = _cli(
        admin_broker, "realms", "create", "$CHAT_SPARE", "--type", "chat", "--max-workers", "3"
    )
    assert code == 0, out
    code, out = _cli(admin_broker, "realms", "update", "$CHAT_SPARE", "--strategy", "least_busy")
    assert code == 0, out
    spare = next(
        r
        for r in _admin(admin_broker, "/api/admin/realms")["realms"]  # type: ignore[attr-defined]
        if r["name"] == "$CHAT_SPARE"
    )
    assert spare["strategy"] == "least_busy" and spare["max_workers"] == 3
    assert _cli(admin_broker, "realms", "stop", "$CHAT_SPARE")[0] == 0
    assert "stopped" in _cli(admin_broker, "realms", "list")[1]
    assert _cli(admin_broker, "realms", "resume", "$CHAT_SPARE")[0] == 0
    assert _cli(admin_broker, "realms", "delete", "$CHAT_SPARE")[0] == 0
    names = {r["name"] for r in _admin(admin_broker, "/api/admin/realms")["realms"]}  # type: ignore[attr-defined]
    assert "$CHAT_SPARE" not in names
    # A primary realm cannot be deleted: the broker's reason, and a non-zero exit.
    code, out = _cli(admin_broker, "realms", "delete", "$CHAT")
    assert code == 1 and "409" in out


def test_pools_and_workers_from_the_command_line(
    admin_broker: BrokerServer, ref_workers: dict[str, str]
) -> None:
    code, out = _cli(
        admin_broker,
        "workers",
        "add",
        "spare-chat",
        ref_workers["chat"],
        "--type",
        "chat",
        "--max-concurrency",
        "2",
        "--api-key",
        "sk-secret-value",
    )
    assert code == 0, out
    assert "sk-secret-value" not in out
    code, out = _cli(admin_broker, "workers", "list")
    assert code == 0 and "spare-chat" in out and "ref-imagine" in out
    code, out = _cli(
        admin_broker,
        "pools",
        "create",
        "fast",
        "--type",
        "chat",
        "--member",
        "spare-chat",
        "--member",
        "ref-chat",
    )
    assert code == 0, out
    assert _cli(admin_broker, "pools", "update", "fast", "--member", "spare-chat")[0] == 0
    pools = _admin(admin_broker, "/api/admin/pools")["pools"]
    assert pools == [
        {
            "name": "fast",
            "query_type": "chat",
            "realm": None,
            "members": ["spare-chat"],
            "strategy": "health",
            "blacklisted": False,
        }
    ]
    assert "fast" in _cli(admin_broker, "pools", "list")[1]
    assert _cli(admin_broker, "pools", "delete", "fast")[0] == 0
    assert _cli(admin_broker, "workers", "remove", "spare-chat")[0] == 0
    names = {w["name"] for w in _admin(admin_broker, "/api/admin/workers")["workers"]}  # type: ignore[attr-defined]
    assert "spare-chat" not in names and "ref-chat" in names
    code, out = _cli(admin_broker, "workers", "remove", "spare-chat")
    assert code == 1 and "No worker named spare-chat" in out


def test_wrong_token_and_unreachable_broker_fail_clearly(admin_broker: BrokerServer) -> None:
    code, out = _cli(admin_broker, "realms", "list", token="wrong")
    assert code == 1 and "401" in out
    result = CliRunner().invoke(
        app, ["workers", "list", "--url", "http://127.0.0.1:9", "--token", TOKEN]
    )
    assert result.exit_code == 1 and "cannot reach the broker" in result.output


def test_the_installed_command_runs(admin_broker: BrokerServer) -> None:
    env = {
        **os.environ,
        "COLUMNS": "200",
        "RENTAHAL_URL": admin_broker.url,
        "RENTAHAL_ADMIN_TOKEN": TOKEN,
    }
    done = subprocess.run(
        [sys.executable, "-m", "rentahal", "workers", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ref-chat" in done.stdout
