"""Hugging Face Inference API shape: ``POST /models/{org/name}`` text generation.

Option ``dict_answer`` answers ``{"generated_text"}`` instead of a one-item list.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ._server import FakeState, Recorded, recording


def create_app(state: FakeState) -> Starlette:
    """The fake Inference API; generations append the model name to the prompt."""

    async def generate(request: Request, recorded: Recorded) -> Response:
        model = request.path_params["model"]
        answer = {"generated_text": f"{recorded.json['inputs']} ... ({model})"}
        return JSONResponse(answer if state.options.get("dict_answer") else [answer])

    async def model_status(request: Request, recorded: Recorded) -> Response:
        return JSONResponse({"loaded": True, "state": "Loadable"})

    async def root(request: Request, recorded: Recorded) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/models/{model:path}", recording(state, generate), methods=["POST"]),
            Route("/models/{model:path}", recording(state, model_status), methods=["GET"]),
            Route("/", recording(state, root), methods=["GET"]),
        ]
    )
