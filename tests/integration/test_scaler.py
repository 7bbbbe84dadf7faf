"""The RealmScaler with a command provisioner that starts real reference workers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.support.client import WSClient
from tests.support.servers import BrokerServer, broker_settings, free_port

pytestmark = pytest.mark.timeout(150)
TOKEN = "scaler-admin-token"
WORKER = "rentahal worker --host 127.0.0.1 --port {port} --latency-ms 400 --max-concurrency 1"
# The same worker, joining through self-registration with the scaler's token.
JOINING = (
    WORKER + " --broker {broker} --token {token} --name {name} --type {query_type}"
    " --log-level warning"
)


def _realms(provisioner: dict[str, Any], **scaling: Any) -> dict[str, Any]:
    return {
        "scaling": {
            "interval_s": 0.3,
            "window_s": 1.5,
            "cooldown_s": 0.6,
            "queue_wait_s": 1.0,
            **scaling,
        },
        "realms": {
            "$CHAT": {
                "primary_query_type": "chat",
                "min_workers": 1,
                "max_workers": 3,
                "provisioner": {"max_concurrency": 1, "drain_timeout_s": 10, **provisioner},
            },
            "$IMAGINE": {"primary_query_type": "imagine"},
        },
    }


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Any]:
    started: list[BrokerServer] = []

    def start(doc: dict[str, Any], **sections: dict[str, Any]) -> BrokerServer:
        home = tmp_path / f"b{len(started)}"
        home.mkdir()
        (home / "realms.yml").write_text(yaml.safe_dump(doc))
        port = free_port()
        server = BrokerServer(
            broker_settings(
                home,
                server={"host": "127.0.0.1", "port": port},
                security={"admin_token": TOKEN},
                queue={"max_queued_per_user": 10},
                workers={"health_check_interval": 3600, **sections.get("workers", {})},
            ),
            port=port,
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _scaler(broker: BrokerServer) -> dict[str, Any]:
    answer = httpx.get(
        f"{broker.url}/api/admin/scaler", headers={"X-Admin-Token": TOKEN}, timeout=10
    )
    return answer.json()  # type: ignore[no-any-return]


def _workers(broker: BrokerServer) -> list[dict[str, Any]]:
    realms = httpx.get(
        f"{broker.url}/api/admin/realms", headers={"X-Admin-Token": TOKEN}, timeout=10
    ).json()["realms"]
    return next(r for r in realms if r["name"] == "$CHAT")["workers"]  # type: ignore[no-any-return]


def _wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s:g}s")


def _worker_processes() -> list[psutil.Process]:
    """Workers started by the scaler (its template), not other tests' reference workers."""
    me = psutil.Process(os.getpid())
    found = []
    for p in me.children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if "worker" in line and "--latency-ms 400 --max-concurrency 1" in line:
            found.append(p)
    return found


async def _burst(ws_url: str, users: int, each: int) -> list[dict[str, Any]]:
    async def one_user() -> list[dict[str, Any]]:
        client = await WSClient.connect(ws_url)
        try:
            await client.connect_sequence()
            for i in range(each):
                await client.send(
                    {"type": "submit_query", "query": {"prompt": f"q{i}", "query_type": "chat"}}
                )
            out = []
            while len(out) < each:
                out.append(await client.expect_any(("query_result", "error"), 120))
            return out
        finally:
            await client.close()

    results = await asyncio.gather(*(one_user() for _ in range(users)))
    return [r for rs in results for r in rs]


def test_grows_with_a_burst_within_bounds_and_shrinks_back(start_broker: Any) -> None:
    broker = start_broker(
        _realms(
            {"command": JOINING, "max_concurrency": 1},
            max_backup_realms=0,
            heartbeat_s=0.5,
            lease_s=3,
        )
    )
    # No workers at all: min_workers 1 is honoured at start.
    _wait(lambda: len(_workers(broker)) == 1, 30, "a first worker")
    first = _workers(broker)[0]
    assert first["provisioned"] is True and first["name"].startswith("auto-chat-")
    peak = {"workers": 1}

    async def burst_and_watch() -> list[dict[str, Any]]:
        task = asyncio.create_task(_burst(broker.ws_url, users=30, each=3))
        while not task.done():
            count = len(await asyncio.to_thread(_workers, broker))
            peak["workers"] = max(peak["workers"], count)
            await asyncio.sleep(0.2)
        return await task

    answers = asyncio.run(burst_and_watch())
    assert len(answers) == 90
    assert all(a["type"] == "query_result" for a in answers), [
        a for a in answers if a["type"] != "query_result"
    ][:3]
    assert peak["workers"] == 3
    # Idle again: back to min_workers, and the processes it stopped are gone.
    _wait(lambda: len(_workers(broker)) == 1, 60, "shrinking back to one worker")
    _wait(lambda: len(_worker_processes()) == 1, 20, "stopped worker processes gone")
    events = _scaler(broker)["events"]
    actions = [e["action"] for e in events]
    assert actions.count("added") >= 3 and actions.count("removed") >= 2
    grow = next(e for e in events if e["action"] == "scale_up" and "min_workers" not in e["reason"])
    assert grow["figures"]["workers"] >= 1 and (
        "utilisation" in grow["reason"] or "queue wait" in grow["reason"]
    )
    metrics = httpx.get(f"{broker.url}/metrics", timeout=10).text
    assert 'rentahal_scaler_provisioned_workers{realm="$CHAT"} 1.0' in metrics


def test_a_failing_provisioner_backs_off_and_is_reported(start_broker: Any, tmp_path: Path) -> None:
    broker = start_broker(_realms({"command": "false {port}", "start_timeout_s": 1.5}))
    _wait(
        lambda: sum(e["action"] == "failed" for e in _scaler(broker)["events"]) >= 2,
        30,
        "two failures",
    )
    failures = [e for e in reversed(_scaler(broker)["events"]) if e["action"] == "failed"]
    assert "next try in" in failures[0]["reason"]
    delays = [float(f["reason"].rsplit("next try in ", 1)[1].rstrip("s")) for f in failures[:2]]
    assert delays[1] > delays[0]  # back-off grows
    # Never a loop of starts: far fewer attempts than rounds.
    time.sleep(3)
    attempts = sum(e["action"] == "scale_up" for e in _scaler(broker)["events"])
    assert attempts <= 4
    assert _workers(broker) == []


def test_at_max_workers_a_backup_realm_opens_and_closes_when_idle(start_broker: Any) -> None:
    doc = _realms({"command": WORKER}, max_backup_realms=1)
    doc["realms"]["$CHAT"]["max_workers"] = 1
    doc["realms"]["$CHAT"]["queue_threshold"] = 3  # a longer queue goes to the backup
    broker = start_broker(doc)
    _wait(lambda: len(_workers(broker)) == 1, 30, "a first worker")

    def backup_workers() -> int:
        realms = httpx.get(
            f"{broker.url}/api/admin/realms", headers={"X-Admin-Token": TOKEN}, timeout=10
        ).json()["realms"]
        backup = next((r for r in realms if r["name"] == "$CHAT_backup_1"), None)
        return len(backup["workers"]) if backup else 0

    async def two_waves() -> list[dict[str, Any]]:
        first = asyncio.create_task(_burst(broker.ws_url, users=10, each=3))
        await asyncio.to_thread(_wait, backup_workers, 40, "a worker in the backup realm")
        second = await _burst(broker.ws_url, users=10, each=2)
        return [*await first, *second]

    answers = asyncio.run(two_waves())
    assert len(answers) == 50 and all(a["type"] == "query_result" for a in answers)
    actions = [e["action"] for e in _scaler(broker)["events"]]
    assert actions.count("backup_opened") == 1
    opened = next(e for e in _scaler(broker)["events"] if e["action"] == "backup_opened")
    assert "$CHAT_backup_1" in opened["reason"] and "max_workers" in opened["reason"]
    assert any(a.get("realm") == "$CHAT_backup_1" for a in answers)
    _wait(
        lambda: any(e["action"] == "backup_closed" for e in _scaler(broker)["events"]),
        60,
        "the idle backup realm closed",
    )
    names = {
        r["name"]
        for r in httpx.get(
            f"{broker.url}/api/admin/realms", headers={"X-Admin-Token": TOKEN}, timeout=10
        ).json()["realms"]
    }
    assert "$CHAT_backup_1" not in names
    _wait(lambda: len(_worker_processes()) == 1, 20, "the backup's worker stopped")


def test_the_error_rate_trigger_with_standby_workers(
    start_broker: Any, ref_workers: dict[str, str]
) -> None:
    from tests.support.bad_worker import BadWorker
    from tests.support.servers import ThreadServer

    bad = BadWorker("500")
    failing = ThreadServer(bad.app())
    failing.start()
    try:
        doc = _realms(
            {"static": [f"127.0.0.1:{failing.port}", ref_workers["chat"]], "max_concurrency": 4},
            error_rate=0.3,
            high_load=0.99,
            low_load=0.01,
            queue_wait_s=60,
        )
        doc["realms"]["$CHAT"]["max_workers"] = 2
        broker = start_broker(doc, workers={"circuit_failures": 1000, "max_attempts": 1})
        _wait(lambda: len(_workers(broker)) == 1, 30, "the first standby worker")
        assert _workers(broker)[0]["address"] == f"127.0.0.1:{failing.port}"

        async def fail_some() -> list[dict[str, Any]]:
            return await _burst(broker.ws_url, users=3, each=3)

        answers = asyncio.run(fail_some())
        assert any(a["type"] == "error" for a in answers)
        _wait(lambda: len(_workers(broker)) == 2, 20, "a second standby worker")
        grew = next(
            e
            for e in _scaler(broker)["events"]
            if e["action"] == "scale_up" and "error rate" in e["reason"]
        )
        assert grew["figures"]["error_rate"] > 0.3
        assert {w["address"] for w in _workers(broker)} == {
            f"127.0.0.1:{failing.port}",
            ref_workers["chat"],
        }
    finally:
        failing.stop()
