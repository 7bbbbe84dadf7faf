"""A peer that answers garbage is marked down (and its services withdrawn)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rentahal.federation.identity import Identity
from rentahal.federation.signing import sign_response
from tests.support.servers import BrokerServer, ThreadServer, broker_settings, free_port

TOKEN = "garbage-admin-token"


def _garbage_peer(identity: Identity) -> Starlette:
    """Joins properly (signed), then answers every other call with something that is not JSON."""

    async def ident(_request: Request) -> Response:
        return JSONResponse(
            {
                "federation_id": identity.federation_id,
                "public_key": identity.public_key,
                "callback_url": identity.callback_url,
                "realm_types": ["chat"],
            }
        )

    async def join(_request: Request) -> Response:
        body = orjson.dumps(
            {
                "status": "accepted",
                "federation_id": identity.federation_id,
                "public_key": identity.public_key,
                "callback_url": identity.callback_url,
                "realm_types": ["chat"],
            }
        )
        headers = sign_response(identity, 200, body)
        headers.pop("content-type", None)
        return Response(body, media_type="application/json", headers=headers)

    async def garbage(_request: Request) -> Response:
        return Response(b"<html>surprise</html>", media_type="text/html")

    return Starlette(
        routes=[
            Route("/api/federation/identity", ident),
            Route("/api/federation/join", join, methods=["POST"]),
            Route("/api/federation/advertise", garbage, methods=["POST"]),
            Route("/api/federation/discover", garbage),
        ]
    )


def test_a_peer_that_answers_garbage_is_marked_down(tmp_path: Path) -> None:
    peer_port = free_port()
    identity = Identity.load_or_create(
        tmp_path / "peer.pem", "garbage-peer", f"http://127.0.0.1:{peer_port}"
    )
    peer = ThreadServer(_garbage_peer(identity), port=peer_port)
    peer.start()
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    (home / "realms.yml").write_text(
        yaml.safe_dump(
            {
                "federation_callback_url": f"http://127.0.0.1:{port}",
                "discovery": {"bootstrap_nodes": [peer.url], "advertise_interval": 0.3},
                "federation": {"join_token": "shared-token-123", "request_timeout_s": 2},
            }
        )
    )
    broker = BrokerServer(broker_settings(home, security={"admin_token": TOKEN}), port=port)
    broker.start()
    try:
        deadline = time.monotonic() + 20
        state: dict[str, object] = {}
        while time.monotonic() < deadline:
            peers = httpx.get(
                f"{broker.url}/api/admin/federation", headers={"X-Admin-Token": TOKEN}, timeout=10
            ).json()["peers"]
            state = next((p for p in peers if p["federation_id"] == "garbage-peer"), {})
            if state.get("state") == "down":
                break
            time.sleep(0.2)
        assert state.get("state") == "down", state
        assert int(str(state["failures"])) >= 1
        workers = httpx.get(
            f"{broker.url}/api/admin/workers", headers={"X-Admin-Token": TOKEN}, timeout=10
        ).json()["workers"]
        assert not [w for w in workers if w["name"].startswith("fed.garbage-peer.")]
    finally:
        broker.stop()
        peer.stop()
