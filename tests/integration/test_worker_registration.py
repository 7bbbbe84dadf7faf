"""Workers register themselves with a token: good, wrong and revoked tokens; leases."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from rentahal.cli import app
from tests.support.servers import BrokerServer, broker_settings, free_port

pytestmark = pytest.mark.timeout(120)
TOKEN = "registration-admin-token"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerServer]:
    (tmp_path / "realms.yml").write_text(
        yaml.safe_dump({"scaling": {"heartbeat_s": 0.5, "lease_s": 2.0}})
    )
    server = BrokerServer(broker_settings(tmp_path, security={"admin_token": TOKEN}))
    server.start()
    yield server
    server.stop()


def _config(broker: BrokerServer, tmp_path: Path) -> Path:
    ini = tmp_path / "config.ini"
    ini.write_text(f"[Database]\ndatabase_name = {broker.settings.database.database_name}\n")
    return ini


def _token(broker: BrokerServer, tmp_path: Path, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["workers", "token", "create", *args, "--config", str(_config(broker, tmp_path))]
    )
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def _names(broker: BrokerServer) -> set[str]:
    workers = httpx.get(
        f"{broker.url}/api/admin/workers", headers={"X-Admin-Token": TOKEN}, timeout=10
    ).json()["workers"]
    return {w["name"] for w in workers}


def _wait(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:g}s")


def _worker(
    broker: BrokerServer, token: str, name: str, query_type: str = "chat"
) -> subprocess.Popen[bytes]:
    port = free_port()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rentahal",
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--broker",
            broker.url,
            "--token",
            token,
            "--type",
            query_type,
            "--name",
            name,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_a_worker_registers_heartbeats_and_unregisters(
    broker: BrokerServer, tmp_path: Path
) -> None:
    token = _token(broker, tmp_path, "--type", "chat", "--name", "lab")
    assert token.startswith("rwt_")
    proc = _worker(broker, token, "lab-1")
    try:
        _wait(lambda: "lab-1" in _names(broker), 30, "registration")
        answer = httpx.post(
            f"{broker.url}/api/admin/workers",
            headers={"X-Admin-Token": TOKEN},
            timeout=10,
            json={"name": "x", "address": "127.0.0.1:9", "type": "chat"},
        )
        assert answer.status_code == 201
        time.sleep(3.0)  # longer than the lease: the heartbeats keep it
        assert "lab-1" in _names(broker)
    finally:
        _stop(proc)
    _wait(lambda: "lab-1" not in _names(broker), 10, "unregistration on SIGTERM")


def test_heartbeats_that_stop_end_the_registration(broker: BrokerServer, tmp_path: Path) -> None:
    token = _token(broker, tmp_path, "--type", "chat")
    proc = _worker(broker, token, "lab-2")
    try:
        _wait(lambda: "lab-2" in _names(broker), 30, "registration")
    finally:
        _stop(proc, signal.SIGKILL)
    _wait(lambda: "lab-2" not in _names(broker), 10, "lease expiry")


def test_wrong_scope_wrong_and_revoked_tokens_are_refused(
    broker: BrokerServer, tmp_path: Path
) -> None:
    url = f"{broker.url}/api/workers/register"
    body = {"name": "rogue", "type": "chat", "address": "127.0.0.1:9"}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer rwt_nope"}, timeout=10)
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    imagine_only = _token(broker, tmp_path, "--type", "imagine")
    scoped = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {imagine_only}"}, timeout=10
    )
    assert scoped.status_code == 403 and "imagine" in scoped.json()["detail"]
    realm_token = _token(broker, tmp_path, "--realm", "$CHAT")
    good = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {realm_token}"}, timeout=10
    )
    assert good.status_code == 201 and good.json()["worker"]["realm"] == "$CHAT"
    assert "rogue" in _names(broker)
    prefix = realm_token[:12]
    runner = CliRunner()
    listed = runner.invoke(
        app,
        ["workers", "token", "list", "--config", str(_config(broker, tmp_path))],
        env={"COLUMNS": "200"},
    )
    assert prefix in listed.output and realm_token not in listed.output
    revoked = runner.invoke(
        app, ["workers", "token", "revoke", prefix, "--config", str(_config(broker, tmp_path))]
    )
    assert revoked.exit_code == 0
    _wait(lambda: "rogue" not in _names(broker), 10, "the revoked token's worker removed")
    again = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {realm_token}"}, timeout=10
    )
    assert again.status_code == 401
    beat = httpx.post(
        f"{broker.url}/api/workers/heartbeat",
        json={"name": "rogue"},
        headers={"Authorization": f"Bearer {realm_token}"},
        timeout=10,
    )
    assert beat.status_code == 401
