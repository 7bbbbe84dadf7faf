"""Realm and pool configuration is cluster state: a change through one node is in effect on all.

Real Redis, PostgreSQL, reference workers and broker processes (``Cluster``).
A change made through node A's admin API must show in the other nodes' admin
API within 2 s and steer the queries they take right after, also after a
restart of those nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

from rentahal.realms.store import RealmStore
from rentahal.realms.sync import CHECK_INTERVAL_S
from rentahal.storage.database import Storage
from tests.support.client import WSClient
from tests.support.cluster import Cluster, Node

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

TOKEN = "realm-config-token"
APPLY_LIMIT_S = 2.0
HEADERS = {"X-Admin-Token": TOKEN}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three nodes on one Redis and one PostgreSQL database, kept for the module.

    ``fast1`` and ``fast2`` serve ``$CHAT``; ``fast3`` names the realm
    ``$CHAT2`` (which serves it only while that realm exists). The tests leave
    the configuration as they found it, apart from its version.
    """
    with Cluster(nodes=3, env={"RENTAHAL_SECURITY__ADMIN_TOKEN": TOKEN}) as started:
        for name in ("fast1", "fast2", "fast3"):
            started.start_worker(name, latency_ms=20)
        fast3 = started.record("fast3")
        fast3.realm = "$CHAT2"
        started.prepare([started.record("fast1"), started.record("fast2"), fast3])
        yield started


@pytest.fixture
async def admin() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client carrying the admin token (URLs are absolute)."""
    async with httpx.AsyncClient(headers=HEADERS, timeout=10) as client:
        yield client


async def realms_of(admin: httpx.AsyncClient, node: Node) -> dict[str, Any]:
    """``GET /api/admin/realms`` of ``node``."""
    response = await admin.get(f"{node.http_url}/api/admin/realms")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def pools_of(admin: httpx.AsyncClient, node: Node) -> dict[str, Any]:
    """``GET /api/admin/pools`` of ``node``."""
    response = await admin.get(f"{node.http_url}/api/admin/pools")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def realm(listing: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The realm ``name`` of a ``/api/admin/realms`` answer."""
    return next((r for r in listing["realms"] if r["name"] == name), None)


async def lag_until(
    admin: httpx.AsyncClient,
    nodes: list[Node],
    check: Callable[[dict[str, Any], dict[str, Any]], bool],
    limit_s: float = APPLY_LIMIT_S,
) -> float:
    """Seconds until ``check(realms, pools)`` holds on every node (fails past ``limit_s``)."""
    started = time.monotonic()
    pending = list(nodes)
    seen: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    while pending:
        for node in list(pending):
            seen = (await realms_of(admin, node), await pools_of(admin, node))
            if check(*seen):
                pending.remove(node)
        elapsed = time.monotonic() - started
        if pending and elapsed > limit_s:
            names = [n.node_id for n in pending]
            pytest.fail(f"change not in effect on {names} after {elapsed:.2f}s; last seen {seen}")
        if pending:
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def change(
    admin: httpx.AsyncClient, method: str, node: Node, path: str, **kwargs: Any
) -> httpx.Response:
    """An admin write through ``node``, expected to succeed."""
    response = await admin.request(method, f"{node.http_url}/api/admin{path}", **kwargs)
    assert response.status_code in (200, 201, 204), response.text
    return response


async def user_on(node: Node) -> WSClient:
    """A fresh user socket on ``node`` (connect sequence read)."""
    client = await WSClient.connect(node.ws_url)
    await client.connect_sequence()
    return client


def running(cluster: Cluster, count: int) -> list[Node]:
    """The first ``count`` nodes running, the others stopped."""
    for node in cluster.nodes:
        if node.index < count:
            cluster.start(node.index)
        else:
            cluster.stop(node.index)
    return cluster.nodes[:count]


def pool_members(pools: dict[str, Any], name: str) -> list[str] | None:
    """The members of pool ``name`` in a ``/api/admin/pools`` answer (``None``: no such pool)."""
    return next((p["members"] for p in pools["pools"] if p["name"] == name), None)


async def served_by(user: WSClient, model_name: str, count: int = 4) -> list[str | None]:
    """The workers that answered ``count`` chat queries naming ``model_name``."""
    results = [await user.query(f"via {model_name}", model_name=model_name) for _ in range(count)]
    return [r.get("worker") for r in results]


async def restore(admin: httpx.AsyncClient, node: Node) -> None:
    """Undo what the tests change (best effort, so one failure does not spread)."""
    base = f"{node.http_url}/api/admin"
    await admin.put(f"{base}/realms/$CHAT", json={"stopped": False, "backup_realms": []})
    for path in ("/realms/$CHAT2", "/realms/$EXTRA", "/pools/only2", "/pools/gone"):
        await admin.delete(f"{base}{path}")


@pytest.mark.timeout(30, func_only=True)
@pytest.mark.parametrize("count", [3, 2])
async def test_changes_through_one_node_are_in_effect_on_the_others_within_2s(
    cluster: Cluster, admin: httpx.AsyncClient, count: int
) -> None:
    nodes = running(cluster, count)
    a, others = nodes[0], nodes[1:]
    users = [await user_on(n) for n in others]
    lags: dict[str, float] = {}
    try:
        await change(
            admin, "POST", a, "/realms", json={"name": "$CHAT2", "primary_query_type": "chat"}
        )
        lags["create"] = await lag_until(
            admin, others, lambda r, _p: realm(r, "$CHAT2") is not None
        )
        await change(admin, "PUT", a, "/realms/$CHAT", json={"backup_realms": ["$CHAT2"]})
        lags["update"] = await lag_until(
            admin, others, lambda r, _p: r["routing_table"]["chat"] == ["$CHAT", "$CHAT2"]
        )
        await change(admin, "PUT", a, "/realms/$CHAT", json={"stopped": True})
        lags["stop"] = await lag_until(
            admin,
            others,
            lambda r, _p: realm(r, "$CHAT")["stopped"] is True,  # type: ignore[index]
        )
        for user in users:  # the stopped primary hands chat to its backup
            result = await user.query("while stopped")
            assert (result["type"], result.get("realm"), result.get("worker")) == (
                "query_result",
                "$CHAT2",
                "fast3",
            ), result
        await change(admin, "PUT", a, "/realms/$CHAT", json={"stopped": False})
        lags["resume"] = await lag_until(
            admin,
            others,
            lambda r, _p: realm(r, "$CHAT")["stopped"] is False,  # type: ignore[index]
        )
        for user in users:
            result = await user.query("resumed")
            assert (result["type"], result.get("realm")) == ("query_result", "$CHAT"), result
        await change(admin, "DELETE", a, "/realms/$CHAT2")
        lags["delete"] = await lag_until(admin, others, lambda r, _p: realm(r, "$CHAT2") is None)
        listing = await realms_of(admin, others[-1])
        assert listing["routing_table"]["chat"] == ["$CHAT"]
        assert realm(listing, "$CHAT")["backup_realms"] == []  # type: ignore[index]

        pool = {"name": "only2", "query_type": "chat", "members": ["fast2"]}
        await change(admin, "POST", a, "/pools", json=pool)
        lags["pool_create"] = await lag_until(
            admin, others, lambda _r, p: pool_members(p, "only2") == ["fast2"]
        )
        for user in users:
            assert await served_by(user, "only2") == ["fast2"] * 4
        await change(admin, "PUT", a, "/pools/only2", json={"members": ["fast1"]})
        lags["pool_update"] = await lag_until(
            admin, others, lambda _r, p: pool_members(p, "only2") == ["fast1"]
        )
        for user in users:
            assert await served_by(user, "only2") == ["fast1"] * 4
        await change(admin, "DELETE", a, "/pools/only2")
        lags["pool_delete"] = await lag_until(
            admin, others, lambda _r, p: pool_members(p, "only2") is None
        )
        figures = " ".join(f"{k}={v:.3f}s" for k, v in lags.items())
        print(f"\nREALM CONFIG APPLY LAG nodes={count} {figures}")
    finally:
        await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
        await restore(admin, a)


@pytest.mark.timeout(30, func_only=True)
async def test_a_restarted_node_loads_the_shared_configuration(
    cluster: Cluster, admin: httpx.AsyncClient
) -> None:
    a, b = running(cluster, 2)
    try:
        await change(
            admin, "POST", a, "/realms", json={"name": "$EXTRA", "primary_query_type": "imagine"}
        )
        await change(admin, "PUT", a, "/realms/$EXTRA", json={"stopped": True})
        await change(
            admin, "POST", a, "/pools", json={"name": "only2", "query_type": "chat", "members": []}
        )
        await change(admin, "PUT", a, "/pools/only2", json={"members": ["fast2"]})
        await change(admin, "POST", a, "/pools", json={"name": "gone", "query_type": "chat"})
        await change(admin, "DELETE", a, "/pools/gone")
        expected = (await realms_of(admin, a))["version"]
        # B was down for all of it, and comes back with a stale realms.yml of its own.
        cluster.stop(1)
        await change(admin, "PUT", a, "/realms/$EXTRA", json={"description": "while B was down"})
        b.realms_file.write_text("realms:\n  $CHAT:\n    primary_query_type: chat\n")
        cluster.start(1)
        listing, pools = await realms_of(admin, b), await pools_of(admin, b)
        assert listing["version"] == expected + 1
        extra = realm(listing, "$EXTRA")
        assert extra is not None
        assert (extra["stopped"], extra["description"]) == (True, "while B was down")
        assert [(p["name"], p["members"]) for p in pools["pools"]] == [("only2", ["fast2"])]
        user = await user_on(b)
        try:
            assert await served_by(user, "only2", 2) == ["fast2"] * 2
        finally:
            await user.close()
        exported = yaml.safe_load(b.realms_file.read_text())
        assert set(exported["realms"]) == {"$CHAT", "$VISION", "$IMAGINE", "$SPEECH", "$EXTRA"}
        assert exported["pools"]["only2"]["members"] == ["fast2"]
    finally:
        await restore(admin, a)


@pytest.mark.timeout(30, func_only=True)
async def test_a_stale_version_is_refused_with_409(
    cluster: Cluster, admin: httpx.AsyncClient
) -> None:
    a, b = running(cluster, 2)
    read = (await realms_of(admin, a))["version"]
    try:
        first = await change(
            admin,
            "PUT",
            b,
            "/realms/$CHAT",
            json={"queue_threshold": 7},
            headers={**HEADERS, "If-Match": f'"{read}"'},
        )
        assert first.headers["ETag"] == f'"{read + 1}"'
        for kwargs in (
            {"json": {"queue_threshold": 9}, "headers": {**HEADERS, "If-Match": f'"{read}"'}},
            {"json": {"queue_threshold": 9, "version": read}},
        ):
            stale = await admin.put(f"{a.http_url}/api/admin/realms/$CHAT", **kwargs)  # type: ignore[arg-type]
            assert stale.status_code == 409, stale.text
            assert f"version {read + 1}" in stale.json()["detail"]
            assert stale.headers["ETag"] == f'"{read + 1}"'
        stale_pool = await admin.post(
            f"{b.http_url}/api/admin/pools",
            json={"name": "gone", "query_type": "chat", "version": read},
        )
        assert stale_pool.status_code == 409, stale_pool.text
        await lag_until(
            admin,
            [a, b],
            lambda r, p: (
                realm(r, "$CHAT")["queue_threshold"] == 7  # type: ignore[index]
                and pool_members(p, "gone") is None
            ),
        )
        # No version: each write applies to the newest one (both survive), atomically.
        await asyncio.gather(
            change(admin, "PUT", a, "/realms/$CHAT", json={"max_workers": 4}),
            change(admin, "PUT", b, "/realms/$VISION", json={"max_workers": 3}),
        )
        await lag_until(
            admin,
            [a, b],
            lambda r, _p: (
                r["version"] == read + 3
                and realm(r, "$CHAT")["max_workers"] == 4  # type: ignore[index]
                and realm(r, "$VISION")["max_workers"] == 3
            ),  # type: ignore[index]
        )
    finally:
        await admin.put(
            f"{a.http_url}/api/admin/realms/$CHAT", json={"queue_threshold": 50, "max_workers": 10}
        )
        await admin.put(f"{a.http_url}/api/admin/realms/$VISION", json={"max_workers": 5})


@pytest.mark.timeout(30, func_only=True)
async def test_a_missed_announcement_is_caught_by_the_periodic_check(
    cluster: Cluster, admin: httpx.AsyncClient
) -> None:
    a, b = running(cluster, 2)
    storage = Storage(cluster.database_url)
    store = RealmStore(storage)
    try:
        current = await store.load()
        assert current is not None
        changed = current.file.model_copy(deep=True)
        changed.realms["$CHAT"].queue_threshold = 11
        # Written straight to the database: no realms_changed message is sent.
        await store.save(changed, current.stopped, based_on=current.version)
        lag = await lag_until(
            admin,
            [a, b],
            lambda r, _p: realm(r, "$CHAT")["queue_threshold"] == 11,  # type: ignore[index]
            limit_s=CHECK_INTERVAL_S + 1.0,
        )
        print(f"\nREALM CONFIG PERIODIC CHECK LAG {lag:.3f}s")
    finally:
        await storage.close()
        await admin.put(f"{a.http_url}/api/admin/realms/$CHAT", json={"queue_threshold": 50})
