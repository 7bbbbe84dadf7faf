"""``/ws`` refuses pages of other origins, and sets an HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

import json
from http.cookies import SimpleCookie
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from tests.support.servers import BrokerServer


async def _open(server: BrokerServer, **headers: str) -> ClientConnection:
    origin = headers.pop("Origin", None)
    return await websockets.connect(
        server.ws_url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=10,
    )


async def _refused(server: BrokerServer, **headers: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        ws = await _open(server, **headers)
        await ws.close()
    return refused.value.response.status_code


async def _first(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await ws.recv(decode=True))  # type: ignore[no-any-return]


def _set_cookie(ws: ClientConnection) -> SimpleCookie:
    assert ws.response is not None
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(ws.response.headers["Set-Cookie"])
    return cookie


async def test_foreign_origin_refused_own_origin_accepted(broker_factory) -> None:
    server = broker_factory()
    own = f"http://127.0.0.1:{server.port}"
    for foreign in (
        "http://evil.example",
        "http://127.0.0.1:1",  # another port is another origin
        f"https://127.0.0.1:{server.port}",
        "null",
        f"http://127.0.0.1:{server.port}.evil.example",
    ):
        assert await _refused(server, Origin=foreign) == 403, foreign
    ws = await _open(server, Origin=own)
    assert (await _first(ws))["type"] == "set_cookie"
    await ws.close()
    ws = await _open(server)  # no Origin: a program, not a browser page
    assert (await _first(ws))["type"] == "set_cookie"
    await ws.close()


async def test_allowed_origins(broker_factory) -> None:
    server = broker_factory(
        security={"allowed_origins": "https://app.example.com, http://b.test:8080"}
    )
    for origin in ("https://app.example.com", "HTTPS://APP.example.com:443", "http://b.test:8080"):
        ws = await _open(server, Origin=origin)
        assert (await _first(ws))["type"] == "set_cookie", origin
        await ws.close()
    assert await _refused(server, Origin="https://sibling.example.com") == 403
    assert await _refused(server, Origin="http://b.test") == 403


async def test_forwarded_headers_only_from_trusted_proxies(broker_factory) -> None:
    forwarded = {
        "Origin": "https://rentahal.example.org",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "rentahal.example.org",
    }
    untrusted = broker_factory()
    assert await _refused(untrusted, **forwarded) == 403
    behind_proxy = broker_factory(security={"trusted_proxies": "127.0.0.0/8, ::1"})
    ws = await _open(behind_proxy, **forwarded)
    cookie = _set_cookie(ws)["user_guid"]
    assert cookie["secure"], "a cookie given over HTTPS is Secure"
    await ws.close()


async def test_original_client_flow_keeps_working(broker_factory) -> None:
    server = broker_factory()
    own = f"http://127.0.0.1:{server.port}"
    ws = await _open(server, Origin=own)
    message = await _first(ws)
    assert message["type"] == "set_cookie" and message["name"] == "user_guid"
    cookie = _set_cookie(ws)["user_guid"]
    assert cookie.value == message["value"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]
    assert (await _first(ws))["type"] == "user_info"
    await ws.close()
    # The client reconnects with the cookie it was given: same user, no new cookie.
    again = await _open(server, Origin=own, Cookie=f"user_guid={message['value']}")
    info = await _first(again)
    assert info["type"] == "user_info" and info["data"]["guid"] == message["value"]
    assert _set_cookie(again)["user_guid"].value == message["value"]  # refreshed as HttpOnly
    await again.close()
