"""Signed calls to other installations, with bounded answers and verified replies."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from rentahal.backends import HttpClient
from rentahal.federation.identity import Identity
from rentahal.federation.peers import Peer
from rentahal.federation.signing import SignatureError, Verifier, sign_request

MAX_ANSWER_BYTES = 64 * 1024 * 1024


class PeerCallFailed(Exception):
    """A call to a peer did not reach it, or its answer cannot be trusted or read.

    ``connected`` is False when the request never reached the peer.
    """

    def __init__(self, message: str, *, connected: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.connected = connected
        self.status = status


class PeerClient:
    """Signs requests with this installation's key and verifies each peer's answers."""

    def __init__(self, identity: Identity, http: HttpClient, verifier: Verifier) -> None:
        self.identity = identity
        self.http = http
        self.verifier = verifier

    async def call(
        self,
        peer: Peer,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        timeout_s: float,
    ) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` of a signed call; the answer must be signed by ``peer``."""
        status, body, rtt_ms = await self.exchange(
            peer.callback_url, method, path, payload, timeout_s, expect=peer.federation_id
        )
        peer.answered(rtt_ms)
        return status, body

    async def exchange(
        self,
        base_url: str,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        timeout_s: float,
        *,
        expect: str | None,
    ) -> tuple[int, dict[str, Any], float]:
        """One signed request to ``base_url``; the answer is verified when ``expect`` is set."""
        url = base_url.rstrip("/") + path
        body = b"" if payload is None else orjson.dumps(payload)
        headers = sign_request(self.identity, method, url, body)
        started = time.monotonic()
        try:
            async with self.http.request(
                method,
                url,
                data=body if payload is not None else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                status, answer_headers = response.status, dict(response.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            raise PeerCallFailed(f"{url}: {exc.__class__.__name__}", connected=False) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PeerCallFailed(f"{url}: {exc.__class__.__name__}", connected=True) from None
        rtt_ms = (time.monotonic() - started) * 1000
        if len(raw) > MAX_ANSWER_BYTES:
            raise PeerCallFailed(f"{url}: answer too large", connected=True, status=status)
        if expect is not None:
            try:
                self.verifier.verify_response(status, answer_headers, raw, expect)
            except SignatureError as exc:
                raise PeerCallFailed(
                    f"{url}: untrusted answer ({exc})", connected=True, status=status
                ) from None
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise PeerCallFailed(
                f"{url}: answer is not JSON", connected=True, status=status
            ) from None
        if not isinstance(data, dict):
            raise PeerCallFailed(f"{url}: answer is not an object", connected=True, status=status)
        return status, data, rtt_ms
