"""Ollama native API shape: ``/api/chat`` (non-streamed) and ``/api/tags``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._server import FakeState, Recorded, recording

TAGS = {
    "models": [
        {"name": "llama3:latest", "model": "llama3:latest", "size": 4661224676},
        {"name": "llava:latest", "model": "llava:latest", "size": 4733363377},
    ]
}


def create_app(state: FakeState) -> Starlette:
    """The fake Ollama server; chat answers echo the prompt and the model."""

    async def chat(request: Request, recorded: Recorded) -> Response:
        body = recorded.json
        message = body["messages"][-1]
        images = len(message.get("images", []))
        content = f"{body['model']} says: {message['content']} ({images} images)"
        return JSONResponse(
            {
                "model": body["model"],
                "created_at": "2024-05-01T12:00:00Z",
                "message": {"role": "assistant", "content": content},
                "done": True,
                "done_reason": "stop",
            }
        )

    async def tags(request: Request, recorded: Recorded) -> Response:
        return JSONResponse(TAGS)

    return Starlette(
        routes=[
            Route("/api/chat", recording(state, chat), methods=["POST"]),
            Route("/api/tags", recording(state, tags), methods=["GET"]),
        ]
    )
