"""Fake worker servers (one per API shape, real HTTP on loopback) and a client per test."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette

# ``tests.fakes`` lives beside the package; make the repository root importable
# however pytest was started (the console script does not put it on sys.path).
_ROOT = str(Path(__file__).resolve().parents[3])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fakes import FakeServer, FakeState, a1111, claude, huggingface, ollama, openai  # noqa: E402

from rentahal.backends import HttpClient  # noqa: E402
from rentahal.backends._http import (  # noqa: E402
    DEFAULT_MAX_ANSWER_BYTES,
    close_http,
    use_lean_http,
)


def _serve(create_app: Callable[[FakeState], Starlette]) -> Iterator[FakeServer]:
    server = FakeServer(create_app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _a1111_server() -> Iterator[FakeServer]:
    yield from _serve(a1111.create_app)


@pytest.fixture(scope="session")
def _ollama_server() -> Iterator[FakeServer]:
    yield from _serve(ollama.create_app)


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[FakeServer]:
    yield from _serve(openai.create_app)


@pytest.fixture(scope="session")
def _claude_server() -> Iterator[FakeServer]:
    yield from _serve(claude.create_app)


@pytest.fixture(scope="session")
def _huggingface_server() -> Iterator[FakeServer]:
    yield from _serve(huggingface.create_app)


def _fresh(server: FakeServer) -> Iterator[FakeServer]:
    server.state.reset()
    yield server
    server.state.reset()


@pytest.fixture
def fake_a1111(_a1111_server: FakeServer) -> Iterator[FakeServer]:
    """A WebUI fake with no recorded requests and good behaviour."""
    yield from _fresh(_a1111_server)


@pytest.fixture
def fake_ollama(_ollama_server: FakeServer) -> Iterator[FakeServer]:
    """An Ollama fake with no recorded requests and good behaviour."""
    yield from _fresh(_ollama_server)


@pytest.fixture
def fake_openai(_openai_server: FakeServer) -> Iterator[FakeServer]:
    """An OpenAI-compatible fake with no recorded requests and good behaviour."""
    yield from _fresh(_openai_server)


@pytest.fixture
def fake_claude(_claude_server: FakeServer) -> Iterator[FakeServer]:
    """A Claude API fake with no recorded requests and good behaviour."""
    yield from _fresh(_claude_server)


@pytest.fixture
def fake_huggingface(_huggingface_server: FakeServer) -> Iterator[FakeServer]:
    """A Hugging Face Inference fake with no recorded requests and good behaviour."""
    yield from _fresh(_huggingface_server)


LANES = ["aiohttp", "lean"]


@asynccontextmanager
async def on_lane(
    lane: str, max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES, **session: Any
) -> AsyncIterator[HttpClient]:
    """A client whose calls go over aiohttp alone, or with its plain calls on the lean
    lane (as the broker's)."""
    async with aiohttp.ClientSession(**session) as http:
        if lane == "lean":
            use_lean_http(http, max_answer_bytes)
        try:
            yield http
        finally:
            await close_http(http)


@pytest.fixture(params=LANES)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[HttpClient]:
    """One HTTP client per test, as the broker shares one per node, on each lane."""
    async with on_lane(request.param) as http:
        yield http
