"""FastAPI app factory; the lifespan starts and stops everything in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from rentahal.api import admin, admin_workers, federation, metrics, ws
from rentahal.api import scaler as scaler_api
from rentahal.api import workers as workers_api
from rentahal.api.client_address import ClientAddressMiddleware
from rentahal.api.client_errors import add_client_error_handlers
from rentahal.api.debug import router as debug_router
from rentahal.api.fast_route import BrokerApp
from rentahal.api.limits import BodyLimitMiddleware, BodyLimits
from rentahal.api.openai import router as openai_router
from rentahal.api.queries import router as queries_router
from rentahal.api.security import add_security_headers
from rentahal.backends import HttpClient
from rentahal.backends._http import close_http, limited_response_class, use_lean_http
from rentahal.backends.resolver import GuardedResolver
from rentahal.broker import Broker
from rentahal.bus.base import Bus
from rentahal.bus.counters import MemoryCounters, ShareCounters
from rentahal.bus.memory import MemoryBus
from rentahal.bus.state import ClusterState, MemoryState
from rentahal.config import Settings
from rentahal.federation.service import start_federation
from rentahal.heap import serving_heap
from rentahal.realms.registration import LeaseSweeper, Registrations
from rentahal.realms.scaler import RealmScaler, ScalerCollector
from rentahal.realms.scaler_book import ScalerBook
from rentahal.storage.shards import make_storage

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "web" / "static"


def make_http_client(settings: Settings) -> HttpClient:
    """The one pooled HTTP client of this process (per-call timeouts override the default).

    Call it inside the running loop; the caller closes it.
    """
    perf = settings.performance
    connector = aiohttp.TCPConnector(
        limit=512,
        limit_per_host=0,
        ttl_dns_cache=300,
        resolver=GuardedResolver(settings.security),
    )
    client = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=perf.query_timeout, sock_connect=perf.connect_timeout),
        response_class=limited_response_class(settings.workers.max_answer_bytes),
    )
    use_lean_http(client, settings.workers.max_answer_bytes, perf.connect_timeout)
    return client


def make_bus(settings: Settings) -> Bus:
    """The memory bus, or the Redis bus when ``redis_url`` is set."""
    if settings.broker.redis_url:
        from rentahal.bus.redis import RedisBus

        return RedisBus(
            settings.broker.redis_url,
            settings.broker.resolved_node_id(),
            claim_idle_ms=int(settings.broker.claim_idle_s * 1000),
        )
    return MemoryBus()


def make_state(settings: Settings) -> ClusterState:
    """Shared cluster state: in Redis when ``redis_url`` is set, else in memory."""
    if settings.broker.redis_url:
        from rentahal.bus.state.redis import RedisState

        return RedisState(settings.broker.redis_url)
    return MemoryState()


def make_counters(settings: Settings) -> ShareCounters:
    """Per-user and per-address share counters: in Redis when ``redis_url`` is set."""
    if settings.broker.redis_url:
        from rentahal.bus.counters import RedisCounters

        return RedisCounters(settings.broker.redis_url)
    return MemoryCounters()


# Shutdown is bounded: draining jobs takes at most ~7 s of this; what is still
# running after the limit is abandoned (its jobs are reclaimed by other nodes).
STOP_TIMEOUT_S = 12.0
CLOSE_TIMEOUT_S = 3.0


async def _within(limit_s: float, what: str, close: Callable[[], Awaitable[None]]) -> None:
    """Run one shutdown step, giving up (with an error in the log) after ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            await close()
    except TimeoutError:
        logger.error("stopping the %s took longer than %.0fs; going on", what, limit_s)


def create_app(settings: Settings) -> FastAPI:
    """The broker application for ``settings``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            storage = make_storage(settings)  # sharded when realms.yml says so
            stack.push_async_callback(_within, CLOSE_TIMEOUT_S, "database", storage.close)
            client = make_http_client(settings)
            stack.push_async_callback(
                _within, CLOSE_TIMEOUT_S, "http client", functools.partial(close_http, client)
            )
            state = make_state(settings)
            stack.push_async_callback(_within, CLOSE_TIMEOUT_S, "cluster state", state.close)
            counters = make_counters(settings)
            stack.push_async_callback(_within, CLOSE_TIMEOUT_S, "share counters", counters.close)
            broker = Broker(settings, storage, make_bus(settings), client, state, counters)
            await broker.start()
            stack.push_async_callback(_within, STOP_TIMEOUT_S, "broker", broker.stop)
            federation = await start_federation(settings, storage, broker)
            stack.push_async_callback(_within, CLOSE_TIMEOUT_S, "federation", federation.stop)
            app.state.broker = broker
            app.state.federation = federation
            registrations = Registrations(broker, storage)
            sweeper = LeaseSweeper(registrations)
            sweeper.start()
            stack.push_async_callback(_within, CLOSE_TIMEOUT_S, "lease sweeper", sweeper.stop)
            app.state.registrations = registrations
            host = (
                settings.server.host
                if settings.server.host not in ("0.0.0.0", "::", "")
                else "127.0.0.1"
            )
            scaler = RealmScaler(
                broker, registrations, f"http://{host}:{settings.server.port}", ScalerBook(storage)
            )
            broker.parts().metrics.registry.register(ScalerCollector(scaler))
            scaler.start()
            stack.push_async_callback(_within, STOP_TIMEOUT_S, "scaler", scaler.stop)
            app.state.scaler = scaler
            app.state.loop = asyncio.get_running_loop()
            # Last: what start-up made is frozen out of the collector's passes.
            stack.enter_context(serving_heap(settings.performance.gc_young_threshold))
            logger.info("broker %s ready", broker.node_id)
            yield

    app = BrokerApp(title="RENT-A-HAL broker", lifespan=lifespan)
    app.state.settings = settings
    add_security_headers(app)
    add_client_error_handlers(app)
    # Outermost of ours: a body is measured before anything reads or parses it.
    limits = BodyLimits.from_settings(settings)
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    app.add_middleware(ClientAddressMiddleware, security=settings.security)
    # POST /v1/chat/completions skips the stack above, under the same rules.
    app.use_fast_route(limits, settings.security.trusted_networks)
    app.include_router(ws.router)
    app.include_router(debug_router)
    app.include_router(queries_router)
    app.include_router(openai_router)
    app.include_router(metrics.router)
    app.include_router(admin.router)
    app.include_router(admin_workers.router)
    app.include_router(federation.router)
    app.include_router(scaler_api.router)
    app.include_router(workers_api.router)

    @app.get("/", include_in_schema=False, response_model=None)
    async def index() -> FileResponse | HTMLResponse:
        page = STATIC_DIR / "index.html"
        if page.exists():
            return FileResponse(page, headers={"Cache-Control": "no-cache"})
        return HTMLResponse("<h1>RENT-A-HAL</h1><p>The web GUI is not installed.</p>")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app
