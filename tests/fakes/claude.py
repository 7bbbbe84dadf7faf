"""Anthropic Messages API shape: ``/v1/messages`` and ``/v1/models``.

Served at the root and again under ``/proxy`` (a gateway that prefixes paths).
Requests without ``x-api-key`` get Anthropic's 401.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._server import FakeState, Recorded, recording

MODELS = {
    "data": [
        {"type": "model", "id": "claude-3-haiku-20240307", "display_name": "Claude 3 Haiku"},
        {"type": "model", "id": "claude-3-5-sonnet-20241022", "display_name": "Claude 3.5"},
    ],
    "has_more": False,
}


def _unauthorized() -> Response:
    error = {"type": "authentication_error", "message": "invalid x-api-key"}
    return JSONResponse({"type": "error", "error": error}, status_code=401)


def create_app(state: FakeState) -> Starlette:
    """The fake Claude API; answers describe what the request contained."""

    async def messages(request: Request, recorded: Recorded) -> Response:
        if "x-api-key" not in recorded.headers:
            return _unauthorized()
        body = recorded.json
        content = body["messages"][-1]["content"]
        kinds = "text" if isinstance(content, str) else "+".join(b["type"] for b in content)
        blocks = [{"type": "text", "text": f"{body['model']} read {kinds}"}]
        if state.options.get("thinking_first"):
            blocks.insert(0, {"type": "thinking", "thinking": "hmm"})
        return JSONResponse(
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": blocks,
                "stop_reason": "end_turn",
                "usage": {"input_tokens": 5, "output_tokens": 5},
            }
        )

    async def models(request: Request, recorded: Recorded) -> Response:
        if "x-api-key" not in recorded.headers:
            return _unauthorized()
        return JSONResponse(MODELS)

    routes = []
    for prefix in ("", "/proxy"):
        routes += [
            Route(f"{prefix}/v1/messages", recording(state, messages), methods=["POST"]),
            Route(f"{prefix}/v1/models", recording(state, models), methods=["GET"]),
        ]
    return Starlette(routes=routes)
