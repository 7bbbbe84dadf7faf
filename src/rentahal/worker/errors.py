"""Errors the worker answers with; each carries the HTTP status it maps to::

WorkerNodeError
├── InputError          400: the request is malformed (not an image, not audio, ...)
├── UnsupportedError    501: the configured engine cannot do this
└── UpstreamError       502: the upstream model server failed or answered nonsense
    └── UpstreamTimeout 504: the upstream model server did not answer in time
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse


class WorkerNodeError(Exception):
    """Base of the errors a worker turns into a JSON error answer."""

    status: int = 500
    kind: str = "server_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InputError(WorkerNodeError):
    """The client sent something we cannot use; the message says what."""

    status = 400
    kind = "invalid_request_error"


class UnsupportedError(WorkerNodeError):
    """The configured engine has no such capability."""

    status = 501
    kind = "not_supported"


class UpstreamError(WorkerNodeError):
    """The upstream model server failed; ``status`` may carry its 4xx through."""

    status = 502
    kind = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream model server did not answer within the timeout."""

    status = 504
    kind = "upstream_timeout"


def error_response(path: str, status: int, message: str, kind: str) -> JSONResponse:
    """An error in the shape the caller's protocol expects.

    Ollama clients read ``{"error": str}``, OpenAI clients ``{"error": {"message"}}``;
    everyone else gets FastAPI's ``{"detail": str}``.
    """
    body: dict[str, Any]
    if path.startswith("/api/"):
        body = {"error": message}
    elif path.startswith("/v1/"):
        body = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"detail": message, "error": {"message": message, "type": kind}}
    return JSONResponse(body, status_code=status)


def validation_message(errors: Sequence[Any]) -> str:
    """One line naming each invalid field of a request (pydantic's ``errors()``)."""
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(problems)
