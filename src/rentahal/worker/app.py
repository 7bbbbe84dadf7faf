"""The worker's FastAPI app: engine and HTTP client owned by the lifespan, JSON errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from rentahal.worker.engines import build_engine
from rentahal.worker.engines._upstream import upstream_timeout
from rentahal.worker.errors import WorkerNodeError, error_response, validation_message
from rentahal.worker.fast_predict import PREDICT_PATHS, serve_predict
from rentahal.worker.gate import Gate, WorkerState
from rentahal.worker.registration import Registrar
from rentahal.worker.routes import a1111, ollama, openai, predict
from rentahal.worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


async def _on_worker_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WorkerNodeError)
    return error_response(request.url.path, exc.status, exc.message, exc.kind)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = validation_message(exc.errors())
    return error_response(request.url.path, 422, message, "invalid_request_error")


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(request.url.path, exc.status_code, str(exc.detail), "http_error")


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Still a bug to fix, but clients get JSON like every other error; uvicorn logs it.
    logger.error("unhandled %s on %s", type(exc).__name__, request.url.path)
    return error_response(request.url.path, 500, "internal error in the worker", "server_error")


class WorkerApp(FastAPI):
    """The worker's FastAPI app, with ``POST /predict`` on its fast route
    (:mod:`rentahal.worker.fast_predict`) while no middleware is added."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in PREDICT_PATHS
            and not self.user_middleware
            and not self.root_path
        ):
            state: WorkerState | None = getattr(self.state, "worker", None)
            if state is not None:
                scope["app"] = self
                await serve_predict(state, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: WorkerSettings) -> FastAPI:
    """The reference worker app for ``settings``; start it with uvicorn."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=upstream_timeout(settings.upstream_timeout_s))
            )
            engine = build_engine(settings, client)
            gate = Gate(settings.latency_ms, settings.max_concurrency)
            app.state.worker = WorkerState(settings, engine, gate)
            if settings.broker_url and settings.token:
                registrar = Registrar(settings, client)
                registrar.start()
                stack.push_async_callback(registrar.close)
            logger.info(
                "worker engine %s, latency %g ms, max concurrency %s",
                engine.name,
                settings.latency_ms,
                settings.max_concurrency or "unlimited",
            )
            yield

    app = WorkerApp(title="RENT-A-HAL reference worker", version="0.1.0", lifespan=lifespan)
    for module in (predict, a1111, openai, ollama):
        app.include_router(module.router)
    app.add_exception_handler(WorkerNodeError, _on_worker_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
    return app
