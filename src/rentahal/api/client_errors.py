"""Client errors answered as JSON, whatever the client sent (no 500 for a bad body)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_ECHOED_CHARS = 200


def _echo(value: Any) -> Any:
    """The rejected input as the answer may show it: short scalars only, never a tree.

    Containers are named, not echoed (they may be nested deeper than the encoder
    recurses), bytes are decoded leniently and non-finite floats become text.
    """
    if isinstance(value, bytes | bytearray):
        value = bytes(value[:MAX_ECHOED_CHARS]).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value[:MAX_ECHOED_CHARS]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return f"<{type(value).__name__}>"


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 answer, also for inputs that are not UTF-8, hold ``NaN`` or nest deeply."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        shown = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
        if "input" in error:
            shown["input"] = _echo(error["input"])
        errors.append(shown)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def add_client_error_handlers(app: FastAPI) -> None:
    """Install the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
