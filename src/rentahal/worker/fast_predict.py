"""``POST /predict``, the call a broker makes for every query, served beside FastAPI.

Through FastAPI the call passes its middleware stack, the router, dependency
resolution and response-model serialisation: about 1 ms of a cold process's time
per call, which a worker of capacity 1 loses between two model calls.
:func:`serve_predict` reads the body, validates it with the route's own model, runs
the route's own :func:`~rentahal.worker.routes.predict.answer_predict` and answers
errors in the same shapes (:func:`~rentahal.worker.app.error_response`). The
FastAPI route stays for the OpenAPI schema and for apps with middleware.
"""

from __future__ import annotations

import logging

import orjson
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from rentahal.worker.errors import WorkerNodeError, error_response, validation_message
from rentahal.worker.gate import WorkerState
from rentahal.worker.routes.predict import PredictRequest, answer_predict

logger = logging.getLogger(__name__)

PREDICT_PATHS = frozenset({"/predict", "/predict/"})


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or ``None`` when the client left before sending it all."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(state: WorkerState, path: str, raw: bytes) -> Response:
    try:
        body = PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        message = validation_message(exc.errors())
        return error_response(path, 422, message, "invalid_request_error")
    try:
        answer = await answer_predict(state, body)
    except WorkerNodeError as exc:
        return error_response(path, exc.status, exc.message, exc.kind)
    except Exception:
        logger.exception("unhandled error on %s", path)
        return error_response(path, 500, "internal error in the worker", "server_error")
    return Response(orjson.dumps({"response": answer.response}), media_type="application/json")


async def serve_predict(state: WorkerState, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one ``POST /predict`` (or ``/predict/``) as the FastAPI route would."""
    raw = await _read_body(receive)
    if raw is None:
        return
    response: JSONResponse | Response = await _answer(state, scope["path"], raw)
    await response(scope, receive, send)
