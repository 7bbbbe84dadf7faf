"""Shared fixtures: reference workers as processes, a broker on a free port, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Opener, WSClient
from tests.support.servers import (
    BrokerServer,
    broker_settings,
    demo_worker_records,
    reference_worker,
    seed,
)


@pytest.fixture(scope="session")
def ref_workers() -> Iterator[dict[str, str]]:
    """One reference worker process per type, shared by the session (they are stateless)."""
    with (
        reference_worker() as chat,
        reference_worker() as vision,
        reference_worker() as imagine,
        reference_worker() as speech,
    ):
        yield {"chat": chat, "vision": vision, "imagine": imagine, "speech": speech}


BrokerFactory = Callable[..., BrokerServer]


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers on free ports with their own SQLite file; stopped after the test."""
    started: list[BrokerServer] = []

    def start(records: list[Any] | None = None, **sections: dict[str, Any]) -> BrokerServer:
        home = tmp_path / f"broker{len(started)}"
        home.mkdir(exist_ok=True)
        settings = broker_settings(home, **sections)
        seed(settings, records or [])
        server = BrokerServer(settings)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory, ref_workers: dict[str, str]) -> BrokerServer:
    """A broker with one reference worker per query type."""
    return broker_factory(demo_worker_records(ref_workers))


@pytest.fixture
async def connect(broker: BrokerServer) -> AsyncIterator[Callable[..., Any]]:
    """Open clients to ``broker`` (closed after the test)."""
    clients: list[WSClient] = []

    async def open_client(guid: str | None = None, read_sequence: bool = True) -> WSClient:
        client = await WSClient.connect(broker.ws_url, guid)
        clients.append(client)
        if read_sequence:
            await client.connect_sequence()
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture
async def open_client() -> AsyncIterator[Opener]:
    """Connect clients to any broker (closed after the test, even when it fails)."""
    clients: list[WSClient] = []

    async def connect(server: BrokerServer) -> WSClient:
        client = await WSClient.connect(server.ws_url)
        clients.append(client)
        await client.connect_sequence()
        return client

    yield connect
    for client in clients:
        await client.close()
