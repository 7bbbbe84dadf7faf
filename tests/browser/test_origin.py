"""In Chromium: the identity cookie is HttpOnly and Strict, and only allowed origins open /ws.

Two pages of 127.0.0.1 on different ports are the same *site* (so the browser
sends the broker's cookie from either) but different *origins*, like a sibling
subdomain: the case SameSite cannot stop and the Origin check must.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.browser.conftest import OpenPage, wait_connected
from tests.support.servers import BrokerServer, ThreadServer

pytestmark = pytest.mark.browser

PROBE = """<!doctype html><title>probe</title><script>
window.result = "pending";
const ws = new WebSocket("ws://127.0.0.1:%d/ws");
ws.onmessage = (e) => { window.result = "open:" + JSON.parse(e.data).type; ws.close(); };
ws.onerror = () => { if (window.result === "pending") window.result = "refused"; };
</script>"""


@pytest.fixture
def other_site() -> Iterator[ThreadServer]:
    """A page server on another port of 127.0.0.1; ``app.state.broker_port`` is set later."""

    async def probe(request: Request) -> HTMLResponse:
        return HTMLResponse(PROBE % request.app.state.broker_port)

    app = Starlette(routes=[Route("/", probe)])
    server = ThreadServer(app)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _probe(page: Page, site: ThreadServer) -> str:
    page.goto(site.url + "/")
    page.wait_for_function("() => window.result !== 'pending'")
    return str(page.evaluate("window.result"))


def test_cookie_is_httponly_strict_and_survives_reload(
    broker_factory: Callable[..., BrokerServer], open_page: OpenPage
) -> None:
    server = broker_factory()
    page = open_page(server)
    guid = page.evaluate("window.rentahal.state.user.guid")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "user_guid"]
    assert cookie["value"] == guid
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert "user_guid" not in page.evaluate("document.cookie")  # out of the scripts' reach
    page.reload()
    wait_connected(page)
    assert page.evaluate("window.rentahal.state.user.guid") == guid


def test_page_of_another_origin_cannot_open_the_socket(
    broker_factory: Callable[..., BrokerServer], open_page: OpenPage, other_site: ThreadServer
) -> None:
    server = broker_factory()
    other_site.app.state.broker_port = server.port
    victim = open_page(server)  # the victim has a session cookie for the broker
    assert _probe(victim, other_site) == "refused"


def test_allowed_origin_opens_the_socket(
    broker_factory: Callable[..., BrokerServer], open_page: OpenPage, other_site: ThreadServer
) -> None:
    server = broker_factory(security={"allowed_origins": other_site.url})
    other_site.app.state.broker_port = server.port
    page = open_page(server)
    assert _probe(page, other_site) == "open:user_info"  # the cookie came along: no set_cookie
