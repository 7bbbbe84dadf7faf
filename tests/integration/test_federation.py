"""Three independent installations on loopback: admission, discovery, routing, trust."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from http_message_signatures import HTTPMessageSigner, algorithms

from rentahal.federation.identity import Identity
from rentahal.federation.routing import account_guid
from rentahal.federation.signing import TAG, sign_request
from tests.support.client import WSClient
from tests.support.installations import Installation, wait_for
from tests.support.servers import demo_worker_records, reference_worker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def three(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Installation, Installation, Installation]]:
    """A (chat only), B (chat and a slow imagine), C (chat only, knows only B).

    Shared by the tests of this module; the last one kills and restarts B and A.
    """
    tmp_path = tmp_path_factory.mktemp("federation")
    with reference_worker() as chat, reference_worker(latency_ms=1500) as imagine:
        a = Installation("A", tmp_path / "a")
        b = Installation("B", tmp_path / "b")
        c = Installation("C", tmp_path / "c")
        b.configure(demo_worker_records({"chat": chat, "imagine": imagine}))
        a.configure(demo_worker_records({"chat": chat}), bootstrap=[b.url])
        c.configure(demo_worker_records({"chat": chat}), bootstrap=[b.url])
        started: list[Installation] = []
        try:
            for inst in (b, a, c):
                inst.start()
                started.append(inst)
            yield a, b, c
        finally:
            for inst in reversed(started):
                inst.stop()
            for inst in (a, b, c):
                inst.stop()


def _identity(inst: Installation) -> Identity:
    return Identity.load_or_create(inst.home / "federation_key.pem", inst.federation_id, inst.url)


def _remote_worker(inst: Installation, peer_id: str, query_type: str) -> bool:
    workers = inst.admin("GET", "/api/admin/workers").json()["workers"]
    return any(w["name"] == f"fed.{peer_id}.{query_type}" for w in workers)


async def _imagine_and_chat(ws_url: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    client = await WSClient.connect(ws_url)
    try:
        await client.connect_sequence()
        answer = await client.query("a lighthouse at dusk", "imagine", timeout_s=60)
        chat = await client.query("hello at home", "chat")
    finally:
        await client.close()
    assert client.guid is not None
    return client.guid, answer, chat


def test_imagine_runs_through_a_peer_and_is_in_both_ledgers(
    three: tuple[Installation, Installation, Installation],
) -> None:
    a, b, c = three
    a_id, b_id, c_id = a.federation_id, b.federation_id, c.federation_id
    assert len({a_id, b_id, c_id}) == 3
    wait_for(lambda: a.peers()[b_id]["state"] == "active", what="A admitted by B")
    wait_for(lambda: b.peers()[a_id]["state"] == "active", what="B knows A")
    wait_for(lambda: _remote_worker(a, b_id, "imagine"), what="B's imagine advertised to A")
    # C knows only B, and learns A through B's discover.
    wait_for(lambda: a_id in c.peers() and c.peers()[a_id]["state"] == "active", what="C learns A")

    guid, answer, chat = asyncio.run(_imagine_and_chat(a.ws_url))
    assert answer["type"] == "query_result", answer
    assert answer["result_type"] == "image" and len(answer["result"]) > 100
    assert answer["worker"] == f"fed.{b_id}.imagine"
    assert chat["type"] == "query_result" and not chat["worker"].startswith("fed.")
    job_id = answer["job_id"]
    a_rows = a.rows("SELECT user_guid, worker, status, cost FROM queries WHERE job_id = ?", job_id)
    assert a_rows == [
        {
            "user_guid": guid,
            "worker": f"fed.{b_id}.imagine",
            "status": "done",
            "cost": answer["cost"],
        }
    ]
    b_rows = wait_for(
        lambda: b.rows(
            "SELECT user_guid, status, worker FROM queries WHERE user_guid = ?", account_guid(a_id)
        ),
        what="B's ledger row for A",
    )
    assert [(r["status"], r["worker"]) for r in b_rows] == [("done", "ref-imagine")]
    account = b.rows(
        "SELECT nickname, is_sysop, query_count FROM users WHERE guid = ?", account_guid(a_id)
    )
    assert account == [{"nickname": f"federation:{a_id}", "is_sysop": 0, "query_count": 1}]
    status = httpx.get(f"{a.url}/api/federation/status", timeout=10).json()
    assert status["federation_metrics"]["cross_federation_queries"]["out"] == 1
    assert {p["federation_id"] for p in status["remote_federations"]} >= {b_id, c_id}
    b_status = httpx.get(f"{b.url}/api/federation/status", timeout=10).json()
    assert b_status["federation_metrics"]["cross_federation_queries"]["in"] == 1
    metrics = httpx.get(f"{a.url}/metrics", timeout=10).text
    assert 'rentahal_cross_federation_queries_total{direction="out"} 1.0' in metrics

    # Running the same job id again at B runs nothing twice (idempotency key).
    signer = _identity(a)
    body = orjson.dumps(
        {
            "job_id": job_id,
            "hops": 1,
            "visited": [a_id],
            "query": {"prompt": "again", "query_type": "imagine"},
        }
    )
    url = f"{b.url}/api/federation/route"
    again = httpx.post(url, content=body, headers=sign_request(signer, "POST", url, body))
    assert again.status_code == 200 and again.json()["status"] in ("queued", "done")
    time.sleep(2.0)
    assert len(b.rows("SELECT 1 FROM queries WHERE user_guid = ?", account_guid(a_id))) == 1


def test_loops_forgeries_replays_and_wrong_tokens_are_refused(
    three: tuple[Installation, Installation, Installation], tmp_path: Path
) -> None:
    a, b, _c = three
    a_id, b_id = a.federation_id, b.federation_id
    wait_for(lambda: b.peers()[a_id]["state"] == "active", what="B knows A")
    signer = _identity(a)
    url = f"{b.url}/api/federation/route"

    def post(
        payload: dict[str, object], headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> httpx.Response:
        raw = body if body is not None else orjson.dumps(payload)
        return httpx.post(
            url, content=raw, headers=headers or sign_request(signer, "POST", url, raw)
        )

    query = {"prompt": "loop", "query_type": "chat"}
    # A-B-A: B already visited, or too many hops.
    looped = post({"job_id": "loop-1", "hops": 1, "visited": [a_id, b_id], "query": query})
    assert looped.status_code == 409 and "loop" in looped.json()["error"]
    far = post({"job_id": "loop-2", "hops": 3, "visited": [a_id], "query": query})
    assert far.status_code == 409
    # Unsigned, tampered, stale and replayed calls: 401 and nothing stored.
    raw = orjson.dumps({"job_id": "forged", "hops": 1, "visited": [a_id], "query": query})
    assert httpx.post(url, content=raw).status_code == 401
    headers = sign_request(signer, "POST", url, raw)
    tampered = raw.replace(b"loop", b"pool")
    assert post({}, headers=headers, body=tampered).status_code == 401
    old = {"content-type": "application/json"}

    message = SimpleNamespace(method="POST", url=url, headers=old)
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Resolver(signer)).sign(
        message,
        key_id=a_id,
        nonce="stale-nonce-1",
        tag=TAG,
        created=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=900),
        covered_component_ids=("@method", "@path", "content-digest"),
        body=raw,
    )
    stale = post({}, headers=old, body=raw)
    assert stale.status_code == 401 and "age" in stale.json()["detail"]
    fresh = sign_request(signer, "POST", url, raw)
    assert post({}, headers=fresh, body=raw).status_code == 200
    replay = post({}, headers=fresh, body=raw)
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]
    # A stranger's key signs nothing here.
    stranger = Identity.load_or_create(tmp_path / "stranger.pem", a_id, a.url)
    foreign = sign_request(stranger, "POST", url, raw)
    assert post({}, headers=foreign, body=raw).status_code == 401
    forged_rows = b.rows("SELECT 1 FROM queries WHERE prompt = 'pool'")
    assert forged_rows == []

    # A fourth installation with the wrong join token is refused and not kept.
    d = Installation("D", tmp_path / "d")
    d.configure([], bootstrap=[b.url], join_token="not-the-shared-token")
    d.start()
    try:
        d_id = d.federation_id
        time.sleep(2.0)
        assert d_id not in b.peers()
        refused = d.admin("POST", "/api/admin/federation/join", {"url": b.url})
        assert refused.status_code == 403 and "wrong join token" in refused.json()["detail"]
        assert d_id not in b.peers()
    finally:
        d.stop()


class _Resolver:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def resolve_private_key(self, key_id: str) -> object:
        return self.identity.private_key

    def resolve_public_key(self, key_id: str) -> object:
        return self.identity.private_key.public_key()


async def _kill_mid_query(
    a: Installation, b: Installation, a_id: str
) -> tuple[dict[str, Any], float]:
    taken = (await asyncio.to_thread(b.peers))[a_id]["queries_in"]
    client = await WSClient.connect(a.ws_url)
    try:
        await client.connect_sequence()
        await client.send(
            {"type": "submit_query", "query": {"prompt": "slow", "query_type": "imagine"}}
        )
        await asyncio.to_thread(
            wait_for, lambda: b.peers()[a_id]["queries_in"] > taken, 20, "B took the query"
        )
        await asyncio.to_thread(b.kill)
        started = time.monotonic()
        outcome = await client.expect_any(("query_result", "error"), 40)
        return outcome, time.monotonic() - started
    finally:
        await client.close()


def test_a_peer_killed_mid_query_gives_an_error_and_comes_back(
    three: tuple[Installation, Installation, Installation],
) -> None:
    a, b, _c = three
    a_id, b_id = a.federation_id, b.federation_id
    wait_for(lambda: _remote_worker(a, b_id, "imagine"), what="B's imagine advertised to A")
    before = a.rows("SELECT COUNT(*) AS n FROM queries WHERE query_type = 'imagine'")[0]["n"]
    outcome, waited_s = asyncio.run(_kill_mid_query(a, b, a_id))
    assert outcome["type"] == "error", outcome
    assert b_id in outcome["message"]
    assert waited_s < 35
    rows = a.rows("SELECT status, cost FROM queries WHERE query_type = 'imagine' ORDER BY id")
    assert len(rows) == before + 1 and rows[-1] == {"status": "failed", "cost": 0.0}
    # B restarted comes back as A's peer; A's peers survive A's restart.
    b.start()
    wait_for(lambda: a.peers()[b_id]["state"] == "active", 30, what="B back as A's peer")
    a.stop()
    a.start()
    assert b_id in a.peers()
    wait_for(lambda: _remote_worker(a, b_id, "imagine"), 30, what="B's imagine again at A")
