"""``POST /predict`` on the worker's fast route answers exactly as its FastAPI route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from rentahal.worker.app import create_app
from rentahal.worker.settings import WorkerSettings

CASES: list[tuple[str, bytes]] = [
    ("/predict", b'{"prompt": "hello worker", "model_name": "demo-chat"}'),
    ("/predict/", b'{"prompt": "two words", "type": "chat", "model_type": "worker_node"}'),
    ("/predict", b'{"type": "chat"}'),
    ("/predict", b"{not json"),
    ("/predict", b"[1, 2]"),
    ("/predict", b""),
    ("/predict", b'{"prompt": "x", "type": "imagine"}'),
    ("/predict", b'{"prompt": "x", "type": "vision"}'),
    ("/predict", b'{"prompt": "x", "image": "%%%"}'),
    ("/predict", b'{"prompt": "   "}'),
    ("/predict", b'{"prompt": 5}'),
]


async def _pass_through(request: Request, call_next: RequestResponseEndpoint) -> Response:
    return await call_next(request)


@pytest.fixture(scope="module")
def clients() -> Iterator[tuple[TestClient, TestClient]]:
    fast = create_app(WorkerSettings(port=0))
    routed = create_app(WorkerSettings(port=0))
    routed.add_middleware(BaseHTTPMiddleware, dispatch=_pass_through)  # off the fast route
    with TestClient(fast) as a, TestClient(routed) as b:
        yield a, b


@pytest.mark.parametrize(("path", "body"), CASES)
def test_the_fast_route_answers_as_the_fastapi_route(
    clients: tuple[TestClient, TestClient], path: str, body: bytes
) -> None:
    fast, routed = clients
    headers = {"content-type": "application/json"}
    got = fast.post(path, content=body, headers=headers)
    want = routed.post(path, content=body, headers=headers)
    assert got.status_code == want.status_code
    assert got.headers["content-type"] == want.headers["content-type"]
    if want.status_code == 200:
        assert got.json() == want.json()
    else:
        # The same error shape and kind; an error of a field says the same. (Of a body
        # that is not a JSON object each says so in its own words.)
        assert got.json()["error"]["type"] == want.json()["error"]["type"]
        assert got.json()["detail"].startswith("invalid request") == (
            want.json()["detail"].startswith("invalid request")
        )
        if "prompt" in want.json()["detail"] or want.status_code != 422:
            assert got.json() == want.json()
