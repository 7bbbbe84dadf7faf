"""The original /predict protocol: original workers that only route ``/predict/``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router
from tests.fakes import FakeServer, FakeState

from rentahal.backends import HttpClient
from rentahal.backends.predict import PredictBackend
from rentahal.errors import WorkerRejected
from rentahal.models import AIWorker, Query

CHAT = Query(prompt="hello", query_type="chat")


def _slash_only(redirect_slashes: bool) -> Callable[[FakeState], Starlette]:
    """A worker serving ``POST /predict/`` only; the bare path redirects (307) or is 404."""

    def create_app(state: FakeState) -> Starlette:
        async def predict(request: Request) -> JSONResponse:
            recorded = await state.record(request)
            return JSONResponse({"response": f"echo {recorded.json['prompt']}"})

        app = Starlette(routes=[Route("/predict/", predict, methods=["POST"])])
        assert isinstance(app.router, Router)
        app.router.redirect_slashes = redirect_slashes
        return app

    return create_app


@pytest.fixture(scope="module", params=[True, False], ids=["redirects", "404"])
def slash_worker(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(_slash_only(request.param)).start()
    yield server
    server.stop()


async def test_reaches_a_slash_only_worker(slash_worker: FakeServer, client: HttpClient) -> None:
    slash_worker.state.reset()
    worker = AIWorker(name="old", address=slash_worker.address)

    reply = await PredictBackend().run(client, worker, CHAT, 5)

    assert reply.result == "echo hello"
    assert slash_worker.state.last.method == "POST"
    assert slash_worker.state.last.path == "/predict/"
    assert slash_worker.state.last.json["prompt"] == "hello"


async def test_a_worker_without_predict_is_rejected(client: HttpClient) -> None:
    server = FakeServer(lambda state: Starlette()).start()
    try:
        worker = AIWorker(name="empty", address=server.address)
        with pytest.raises(WorkerRejected) as caught:
            await PredictBackend().run(client, worker, CHAT, 5)
        assert caught.value.status == 404  # /predict, then /predict/, both 404
    finally:
        server.stop()
