"""Admission held for a sysop's approval, and bad federation calls (two in-process brokers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from rentahal.federation.identity import Identity
from rentahal.federation.signing import sign_request
from tests.support.servers import BrokerServer, broker_settings, free_port

TOKEN = "admission-admin-token"


def _start(home: Path, trust: str) -> BrokerServer:
    home.mkdir(parents=True)
    port = free_port()
    doc = {
        "federation_callback_url": f"http://127.0.0.1:{port}",
        "discovery": {"enabled": False},
        "federation": {"trust": trust, "join_token": "shared-token-123"},
    }
    (home / "realms.yml").write_text(yaml.safe_dump(doc))
    server = BrokerServer(broker_settings(home, security={"admin_token": TOKEN}), port=port)
    server.start()
    return server


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[BrokerServer, BrokerServer]]:
    guarded = _start(tmp_path / "guarded", "approval")
    joiner = _start(tmp_path / "joiner", "token")
    try:
        yield guarded, joiner
    finally:
        joiner.stop()
        guarded.stop()


def _admin(server: BrokerServer, method: str, path: str, body: object = None) -> httpx.Response:
    return httpx.request(
        method, f"{server.url}{path}", json=body, headers={"X-Admin-Token": TOKEN}, timeout=20
    )


def _identity(server: BrokerServer) -> Identity:
    doc = httpx.get(f"{server.url}/api/federation/identity", timeout=10).json()
    home = Path(server.settings.broker.realms_file).parent
    return Identity.load_or_create(home / "federation_key.pem", doc["federation_id"], server.url)


def test_a_join_waits_for_the_sysops_approval(pair: tuple[BrokerServer, BrokerServer]) -> None:
    guarded, joiner = pair
    joiner_id = _identity(joiner).federation_id
    asked = _admin(joiner, "POST", "/api/admin/federation/join", {"url": guarded.url})
    assert asked.status_code == 200 and asked.json() == {"status": "pending"}
    peers = {
        p["federation_id"]: p
        for p in _admin(guarded, "GET", "/api/admin/federation").json()["peers"]
    }
    assert peers[joiner_id]["state"] == "pending"
    # Until approved, the joiner's signed calls are refused.
    url = f"{guarded.url}/api/federation/advertise"
    body = orjson.dumps({"services": {}})
    early = httpx.post(
        url, content=body, headers=sign_request(_identity(joiner), "POST", url, body)
    )
    assert early.status_code == 401
    approved = _admin(guarded, "POST", f"/api/admin/federation/peers/{joiner_id}/approve")
    assert approved.status_code == 200 and approved.json()["state"] == "active"
    again = _admin(joiner, "POST", "/api/admin/federation/join", {"url": guarded.url})
    assert again.status_code == 200 and again.json()["status"] == "accepted"
    body = orjson.dumps({"services": {"chat": {"workers": 2, "free_capacity": 3}}})
    ok = httpx.post(url, content=body, headers=sign_request(_identity(joiner), "POST", url, body))
    assert ok.status_code == 200
    # Blocked: refused again, and removed: forgotten.
    assert (
        _admin(guarded, "POST", f"/api/admin/federation/peers/{joiner_id}/block").status_code == 200
    )
    body = orjson.dumps({"services": {}})
    blocked = httpx.post(
        url, content=body, headers=sign_request(_identity(joiner), "POST", url, body)
    )
    assert blocked.status_code == 401
    assert _admin(guarded, "DELETE", f"/api/admin/federation/peers/{joiner_id}").status_code == 204
    peers = _admin(guarded, "GET", "/api/admin/federation").json()["peers"]
    assert peers == []


def test_bad_federation_calls_get_4xx_json_and_store_nothing(
    pair: tuple[BrokerServer, BrokerServer],
) -> None:
    guarded, joiner = pair
    url = f"{guarded.url}/api/federation/join"
    for body in (b"", b"not json", b"[]", b'{"federation_id": 5}', b"\xff\xfe"):
        answer = httpx.post(url, content=body, timeout=10)
        assert 400 <= answer.status_code < 500, (body, answer.status_code)
        assert answer.json()
    huge = httpx.post(
        f"{guarded.url}/api/federation/route",
        content=b"x" * (49 * 1024 * 1024),
        timeout=30,
    )
    assert huge.status_code == 413
    for path in ("/api/federation/discover", "/api/federation/result/abc"):
        assert httpx.get(f"{guarded.url}{path}", timeout=10).status_code == 401
    assert _admin(guarded, "GET", "/api/admin/federation").json()["peers"] == []
    # A join signed by a key other than the one it offers is refused.
    me, other = _identity(joiner), _identity(guarded)
    body = orjson.dumps(
        {"federation_id": me.federation_id, "callback_url": joiner.url, "public_key": me.public_key}
    )
    forged = httpx.post(url, content=body, headers=sign_request(other, "POST", url, body))
    assert forged.status_code == 401
    assert _admin(guarded, "GET", "/api/admin/federation").json()["peers"] == []
