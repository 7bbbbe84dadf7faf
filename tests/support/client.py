"""A WebSocket client that speaks the protocol like the original ``script.js``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import websockets
from websockets.asyncio.client import ClientConnection

if TYPE_CHECKING:
    from tests.support.servers import BrokerServer


class WSClient:
    """A connected client; messages are read into ``seen`` as they are awaited."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.guid: str | None = None

    @classmethod
    async def connect(cls, url: str, guid: str | None = None, **kwargs: Any) -> WSClient:
        """Open a socket, sending ``user_guid`` as a cookie when given."""
        headers = {"Cookie": f"user_guid={guid}"} if guid else {}
        ws = await websockets.connect(
            url, additional_headers=headers, max_size=64 * 1024 * 1024, **kwargs
        )
        client = cls(ws)
        client.guid = guid
        return client

    async def send(self, message: dict[str, Any] | str) -> None:
        """Send a message (dicts are JSON-encoded)."""
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next message."""
        async with asyncio.timeout(timeout_s):
            message = json.loads(await self.ws.recv())
        self.seen.append(message)
        if message.get("type") == "set_cookie":
            self.guid = message["value"]
        return message  # type: ignore[no-any-return]

    async def expect(self, kind: str, timeout_s: float = 10.0, **match: Any) -> dict[str, Any]:
        """Read until a message of type ``kind`` (whose fields equal ``match``) arrives."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.recv(timeout_s)
                if message.get("type") == kind and all(
                    message.get(k) == v for k, v in match.items()
                ):
                    return message

    async def expect_any(self, kinds: tuple[str, ...], timeout_s: float = 10.0) -> dict[str, Any]:
        """Read until a message of one of ``kinds`` arrives."""
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.recv(timeout_s)
                if message.get("type") in kinds:
                    return message

    async def connect_sequence(self) -> list[dict[str, Any]]:
        """Read the connect sequence up to ``huggingface_update`` (plus ``active_users``)."""
        out = []
        while True:
            message = await self.recv()
            out.append(message)
            if message["type"] in ("huggingface_update", "error"):
                return out

    async def drain(self, quiet_s: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until ``quiet_s`` passes without a message."""
        out = []
        while True:
            try:
                out.append(await self.recv(quiet_s))
            except TimeoutError:
                return out

    async def query(
        self, prompt: str, query_type: str = "chat", timeout_s: float = 30.0, **extra: Any
    ) -> dict[str, Any]:
        """Submit a query and wait for its ``query_result`` or ``error``."""
        query = {
            "prompt": prompt,
            "query_type": query_type,
            "model_type": "worker_node",
            "model_name": "",
        }
        query.update(extra)
        await self.send({"type": "submit_query", "query": query})
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.recv(timeout_s)
                if message["type"] in ("query_result", "error"):
                    return message

    async def close(self) -> None:
        """Close the socket."""
        await self.ws.close()


Opener = Callable[["BrokerServer"], Awaitable[WSClient]]
"""The ``open_client`` fixture: connect a client (connect sequence read) to a broker."""
