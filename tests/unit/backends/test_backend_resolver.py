"""Worker calls resolve names through ``GuardedResolver``: refused networks are never reached."""

from __future__ import annotations

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tests.fakes import FakeServer, FakeState

from rentahal.backends.predict import PredictBackend
from rentahal.backends.resolver import GuardedResolver
from rentahal.config import SecuritySettings
from rentahal.errors import WorkerUnavailable
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="hello", query_type="chat")


def _worker_app(state: FakeState) -> Starlette:
    async def predict(request: Request) -> Response:
        state.requests.append(await request.json())
        return JSONResponse({"response": "hi"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


async def _call(server: FakeServer, security: SecuritySettings) -> str:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(security))
    async with aiohttp.ClientSession(connector=connector) as client:
        worker = AIWorker(name="named", address=f"localhost:{server.port}")
        reply = await PredictBackend().run(client, worker, CHAT, 5)
    return reply.result


async def test_names_resolving_to_refused_networks_are_not_reached() -> None:
    server = FakeServer(_worker_app).start()
    try:
        assert await _call(server, SecuritySettings()) == "hi"
        # as if "localhost" had been rebound to a refused address after the worker was added
        refused = SecuritySettings(denied_worker_networks="127.0.0.0/8, ::1/128")
        with pytest.raises(WorkerUnavailable, match="unreachable"):
            await _call(server, refused)
        outside = SecuritySettings(worker_networks="10.0.0.0/8")
        with pytest.raises(WorkerUnavailable, match="unreachable"):
            await _call(server, outside)
        assert len(server.state.requests) == 1
    finally:
        server.stop()
