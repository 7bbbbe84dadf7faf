"""Realms on a live broker: admin API, run-time changes, fallback, metrics, isolation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rentahal.models import AIWorker
from tests.support.client import WSClient
from tests.support.servers import BrokerServer, reference_worker


async def _sysop_and_user(server: BrokerServer) -> tuple[WSClient, WSClient]:
    sysop = await WSClient.connect(server.ws_url)
    await sysop.connect_sequence()
    user = await WSClient.connect(server.ws_url)
    await user.connect_sequence()
    return sysop, user


def _saved(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())  # type: ignore[no-any-return]


def _client(server: BrokerServer, guid: str | None = None) -> httpx.AsyncClient:
    cookies = {"user_guid": guid} if guid else None
    return httpx.AsyncClient(base_url=server.url, cookies=cookies, timeout=10)


async def test_admin_api_auth(broker: BrokerServer) -> None:
    sysop, user = await _sysop_and_user(broker)
    async with _client(broker) as anon:
        assert (await anon.get("/api/admin/realms")).status_code == 401
    async with _client(broker, user.guid) as plain:
        assert (await plain.get("/api/admin/realms")).status_code == 403
        assert (await plain.get("/api/admin/pools")).status_code == 403
    async with _client(broker, sysop.guid) as admin:
        response = await admin.get("/api/admin/realms")
        assert response.status_code == 200
        names = [r["name"] for r in response.json()["realms"]]
        assert names == ["$CHAT", "$VISION", "$IMAGINE", "$SPEECH"]
        chat = response.json()["realms"][0]
        assert [w["name"] for w in chat["workers"]] == ["ref-chat"]
    await sysop.close()
    await user.close()


async def test_admin_token_authenticates(broker_factory, ref_workers) -> None:
    server = broker_factory(security={"admin_token": "t0ken"})
    async with _client(server) as c:
        ok = await c.get("/api/admin/realms", headers={"X-Admin-Token": "t0ken"})
        assert ok.status_code == 200
        bad = await c.get("/api/admin/realms", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


async def test_realm_and_pool_crud_is_saved(broker: BrokerServer) -> None:
    sysop, user = await _sysop_and_user(broker)
    path = broker.settings.broker.realms_file
    async with _client(broker, sysop.guid) as admin:
        created = await admin.post(
            "/api/admin/realms",
            json={"name": "$CHAT2", "primary_query_type": "chat", "max_workers": 3},
        )
        assert created.status_code == 201, created.text
        assert created.json()["is_primary"] is False
        assert "$CHAT2" in _saved(path)["realms"]
        bad = await admin.post(
            "/api/admin/realms", json={"name": "$BAD", "primary_query_type": "x"}
        )
        assert bad.status_code == 422
        assert "primary_query_type" in bad.json()["detail"]
        primary = await admin.delete("/api/admin/realms/$CHAT")
        assert primary.status_code == 409
        assert "primary realm" in primary.json()["detail"]
        pool = await admin.post(
            "/api/admin/pools",
            json={
                "name": "fast",
                "query_type": "chat",
                "members": ["ref-chat"],
                "strategy": "round_robin",
            },
        )
        assert pool.status_code == 201, pool.text
        assert _saved(path)["pools"]["fast"]["strategy"] == "round_robin"
        result = await user.query("via pool", model_name="fast")
        assert result["type"] == "query_result" and result["worker"] == "ref-chat"
        assert (await admin.delete("/api/admin/pools/fast")).status_code == 204
        assert (await admin.delete("/api/admin/realms/$CHAT2")).status_code == 204
        assert "$CHAT2" not in _saved(path)["realms"]
    await sysop.close()
    await user.close()


async def test_config_version_in_answers_and_bad_versions_refused(broker: BrokerServer) -> None:
    sysop, user = await _sysop_and_user(broker)
    async with _client(broker, sysop.guid) as admin:
        listing = await admin.get("/api/admin/realms")
        version = listing.json()["version"]
        assert listing.headers["ETag"] == f'"{version}"'
        assert (await admin.get("/api/admin/pools")).json()["version"] == version
        bad = await admin.put(
            "/api/admin/realms/$CHAT", json={"max_workers": 3}, headers={"If-Match": "yesterday"}
        )
        assert bad.status_code == 422 and "If-Match" in bad.json()["detail"]
        bad = await admin.put("/api/admin/realms/$CHAT", json={"max_workers": 3, "version": "1"})
        assert bad.status_code == 422 and "version" in bad.json()["detail"]
        missing = await admin.put("/api/admin/pools/nope", json={"members": []})
        assert missing.status_code == 404
        assert (await admin.delete("/api/admin/pools/nope")).status_code == 404
        ok = await admin.put(
            "/api/admin/realms/$CHAT", json={"max_workers": 3}, headers={"If-Match": "*"}
        )
        assert ok.status_code == 200 and ok.headers["ETag"] == f'"{version + 1}"'
        stale = await admin.delete("/api/admin/realms/$CHAT", headers={"If-Match": f'"{version}"'})
        assert stale.status_code == 409 and f"version {version + 1}" in stale.json()["detail"]
        assert _saved(broker.settings.broker.realms_file)["realms"]["$CHAT"]["max_workers"] == 3
    await sysop.close()
    await user.close()


async def test_realm_created_and_deleted_while_queries_flow(broker_factory) -> None:
    with reference_worker(latency_ms=100) as chat:
        workers = [
            AIWorker(name="w1", address=chat, type="chat", max_concurrency=2),
            AIWorker(name="w2", address=chat, type="chat", max_concurrency=2, realm="$CHAT"),
        ]
        server = broker_factory(workers, queue={"max_queued_per_user": 50})
        sysop, user = await _sysop_and_user(server)
        stop = asyncio.Event()
        results: list[dict] = []

        async def traffic() -> None:
            i = 0
            while not stop.is_set():
                results.append(await user.query(f"q{i}"))
                i += 1

        runner = asyncio.create_task(traffic())
        async with _client(server, sysop.guid) as admin:
            await asyncio.sleep(0.3)
            r = await admin.post(
                "/api/admin/realms", json={"name": "$CHAT_B", "primary_query_type": "chat"}
            )
            assert r.status_code == 201
            moved = await admin.post(
                "/api/admin/realms/$CHAT_B/workers",
                json={"name": "w2", "address": chat, "type": "chat", "max_concurrency": 2},
            )
            assert moved.status_code == 201
            await asyncio.sleep(0.3)
            assert (await admin.delete("/api/admin/realms/$CHAT_B")).status_code == 204
            await asyncio.sleep(0.3)
        stop.set()
        await runner
        assert len(results) >= 5
        assert all(r["type"] == "query_result" for r in results), results
        await sysop.close()
        await user.close()


async def test_stopped_realm_falls_back_to_legacy(broker: BrokerServer) -> None:
    sysop, user = await _sysop_and_user(broker)
    async with _client(broker, sysop.guid) as admin:
        r = await admin.put("/api/admin/realms/$CHAT", json={"stopped": True})
        assert r.status_code == 200 and r.json()["stopped"] is True
        result = await user.query("legacy please")
        assert result["type"] == "query_result"
        assert result["realm"] == "$LEGACY"
        r = await admin.put("/api/admin/realms/$CHAT", json={"stopped": False})
        assert r.json()["stopped"] is False
        assert (await user.query("realm again"))["realm"] == "$CHAT"
    await sysop.close()
    await user.close()


async def test_realm_stop_and_resume_cycles_do_not_grow_the_registry_listeners(
    broker: BrokerServer,
) -> None:
    sysop, user = await _sysop_and_user(broker)
    listening = len(broker.registry._listeners)  # one per running processor
    async with _client(broker, sysop.guid) as admin:
        for _ in range(5):
            for stopped in (True, False):
                r = await admin.put("/api/admin/realms/$CHAT", json={"stopped": stopped})
                assert r.status_code == 200 and r.json()["stopped"] is stopped
        assert len(broker.registry._listeners) == listening
        # the resumed realm's consumer still wakes for work
        assert (await user.query("after the cycles"))["realm"] == "$CHAT"
    await sysop.close()
    await user.close()


async def test_metrics_parse_with_live_figures(broker: BrokerServer) -> None:
    sysop, user = await _sysop_and_user(broker)
    for i in range(3):
        assert (await user.query(f"m{i}"))["type"] == "query_result"
    async with _client(broker) as c:
        text = (await c.get("/metrics")).text
        summary = (await c.get("/api/realms/summary")).json()
        status = (await c.get("/api/federation/status")).json()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("rentahal_queries_total", (("realm", "$CHAT"),))] == 3
    assert samples[("rentahal_processing_time_seconds_count", (("realm", "$CHAT"),))] == 3
    assert ("rentahal_queue_depth", (("realm", "$IMAGINE"),)) in samples
    assert samples[("rentahal_worker_health", (("realm", "$CHAT"), ("worker", "ref-chat")))] == 100
    # $CHAT's own worker served every query: none crossed realms
    assert samples[("rentahal_cross_realm_queries_total", ())] == 0
    chat = next(r for r in summary["realms"] if r["name"] == "$CHAT")
    assert chat["processed"] == 3 and chat["query_types"] == ["chat"]
    assert status["processed"] == 3 and status["error_rate"] == 0.0
    assert status["routing_table"]["chat"] == ["$CHAT"]
    await sysop.close()
    await user.close()


async def test_cross_realm_queries_are_counted(broker_factory) -> None:
    with reference_worker() as chat:
        # the only chat worker sits in $IMAGINE: $CHAT's queries borrow it
        server = broker_factory(
            [AIWorker(name="lodger", address=chat, type="chat", realm="$IMAGINE")]
        )
        sysop, user = await _sysop_and_user(server)

        async def crossed() -> float:
            async with _client(server) as c:
                text = (await c.get("/metrics")).text
            return next(
                s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "rentahal_cross_realm_queries_total"
            )

        assert await crossed() == 0
        for i in range(2):
            result = await user.query(f"borrow {i}")
            assert (result["realm"], result["worker"]) == ("$CHAT", "lodger")
        assert await crossed() == 2
        await sysop.close()
        await user.close()


async def test_saturated_imagine_realm_does_not_delay_chat(broker_factory) -> None:
    with reference_worker(latency_ms=1500) as slow, reference_worker() as fast:
        server = broker_factory(
            [
                AIWorker(name="img", address=slow, type="imagine", max_concurrency=1),
                AIWorker(name="chat", address=fast, type="chat", max_concurrency=4),
            ],
            queue={"max_queued_per_user": 20},
        )
        sysop, user = await _sysop_and_user(server)
        for i in range(5):
            await sysop.send(
                {"type": "submit_query", "query": {"prompt": f"img{i}", "query_type": "imagine"}}
            )
            await sysop.expect("query_queued")
        started = time.monotonic()
        for i in range(5):
            assert (await user.query(f"c{i}"))["type"] == "query_result"
        assert time.monotonic() - started < 1.5  # not behind 7.5 s of imagine work
        await sysop.close()
        await user.close()


async def test_query_no_worker_can_serve_is_refused_at_once(broker_factory) -> None:
    with reference_worker() as chat:
        server = broker_factory([AIWorker(name="c", address=chat, type="chat", models=["m1"])])
        sysop, user = await _sysop_and_user(server)
        started = time.monotonic()
        error = await user.query("draw", "imagine")
        assert error == {"type": "error", "message": "No imagine worker is available"}
        # model_name only prefers: a model no worker lists runs on any chat worker
        answer = await user.query("hi", model_name="m2")
        assert answer["type"] == "query_result" and answer["worker"] == "c"
        assert time.monotonic() - started < 1.0
        await sysop.close()
        await user.close()
