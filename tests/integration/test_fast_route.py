"""``POST /v1/chat/completions`` on the fast route keeps every rule of the FastAPI stack.

The broker's app serves this one call beside its middlewares
(``api/fast_route.py``); these tests check each rule those middlewares apply:
the security headers, the body limit (413 by ``Content-Length`` and while a
chunked body arrives), the client address behind a trusted proxy, the key
(401/403 in OpenAI's shape), and the wait for a share at default settings
(429 only past the waiting line).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rentahal.api.limits import ANONYMOUS_BYTES
from rentahal.api.security import CONTENT_SECURITY_POLICY
from rentahal.models import AIWorker
from tests.integration.test_http_api import auth, start_api_broker, user_with_key, with_key_handlers
from tests.support.raw_http import post_streaming
from tests.support.servers import BrokerServer, demo_worker_records, reference_worker, worker_stats

PATH = "/v1/chat/completions"
CHAT = {"model": "", "messages": [{"role": "user", "content": "hello"}]}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(
    tmp_path: Path, ref_workers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerServer]:
    """A broker at default settings with the reference workers."""
    with_key_handlers(monkeypatch)
    started = start_api_broker(tmp_path, demo_worker_records(ref_workers))
    yield started
    started.stop()


def _assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # Each once: the fast route adds them, nothing adds them again.
    assert len(response.headers.get_list("content-security-policy")) == 1


async def test_answer_and_errors_carry_the_security_headers(server: BrokerServer) -> None:
    ws, key = await user_with_key(server)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            ok = await http.post(PATH, json=CHAT, headers=auth(key))
            bad = await http.post(PATH, json={"messages": []}, headers=auth(key))
            other = await http.get(PATH, headers=auth(key))  # not the fast route: FastAPI's 405
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["role"] == "assistant"
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "invalid_request_error"
        assert other.status_code == 405
        for response in (ok, bad, other):
            _assert_security_headers(response)
    finally:
        await ws.close()


async def test_missing_invalid_key_401_in_openai_shape(server: BrokerServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        missing = await http.post(PATH, json=CHAT)
        invalid = await http.post(PATH, json=CHAT, headers=auth("rah-not-a-key"))
    for response, code in ((missing, "missing_api_key"), (invalid, "invalid_api_key")):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.json()["error"]["code"] == code
        _assert_security_headers(response)


async def test_body_limit_413_before_and_while_the_body_arrives(server: BrokerServer) -> None:
    ws, key = await user_with_key(server)
    try:
        # Past the anonymous limit: 413 without a key, accepted with one.
        padded = {**CHAT, "padding": "x" * (ANONYMOUS_BYTES + 1024)}
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            anonymous = await http.post(PATH, json=padded)
            keyed = await http.post(PATH, json=padded, headers=auth(key))
        assert anonymous.status_code == 413
        assert anonymous.json()["error"]["code"] == "request_too_large"
        assert keyed.status_code == 200, keyed.text
        big = 50 * 1024 * 1024
        for chunked in (False, True):
            answer = await post_streaming("127.0.0.1", server.port, PATH, big, chunked=chunked)
            assert answer.status == 413, answer
            assert answer.json()["error"]["code"] == "request_too_large"
            assert answer.sent_bytes < 10 * 1024 * 1024, "refused before the body arrived"
    finally:
        await ws.close()


def _chat_worker(address: str) -> AIWorker:
    return AIWorker(
        name="slow", address=address, type="chat", protocol="predict", max_concurrency=8
    )


async def test_client_address_from_a_trusted_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address share counts the forwarded client (right-most untrusted hop)."""
    with_key_handlers(monkeypatch)
    with reference_worker(latency_ms=2500) as address:
        server = start_api_broker(
            tmp_path,
            [_chat_worker(address)],
            queue={"max_queued_per_address": 1},
            security={"trusted_proxies": "127.0.0.1, ::1"},
        )
        clients = []
        try:
            keys = []
            for name in ("one", "two", "three"):
                ws, key = await user_with_key(server, name)
                clients.append(ws)
                keys.append(key)
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

                async def post(key: str, forwarded: str) -> httpx.Response:
                    headers = {**auth(key), "X-Forwarded-For": forwarded}
                    return await http.post(PATH, json=CHAT, headers=headers)

                first = asyncio.create_task(post(keys[0], "203.0.113.5"))
                deadline = time.monotonic() + 10
                while worker_stats(address)["in_flight"] < 1:
                    assert time.monotonic() < deadline, "the first query never reached the worker"
                    await asyncio.sleep(0.05)
                # Another user behind the same client address (a forged left part is ignored).
                same: Any = await post(keys[1], "198.51.100.7, 203.0.113.5")
                other = await post(keys[2], "198.51.100.7")
                assert (await first).status_code == 200
            assert same.status_code == 429, same.text
            assert same.json()["error"]["type"] == "rate_limit_error"
            assert "network address" in same.json()["error"]["message"]
            assert other.status_code == 200, other.text
        finally:
            for ws in clients:
                await ws.close()
            server.stop()


async def _burst(server: BrokerServer, key: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
        return await asyncio.gather(
            *(http.post(PATH, json=CHAT, headers=auth(key)) for _ in range(count))
        )


async def test_one_key_beyond_its_share_waits_at_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At default settings one key's requests beyond its share wait for it: no errors."""
    with_key_handlers(monkeypatch)
    with reference_worker(latency_ms=200) as address:
        server = start_api_broker(tmp_path, [_chat_worker(address)])
        try:
            ws, key = await user_with_key(server)
            answers = await _burst(server, key, 24)  # 10 hold the share, 14 wait
            assert [a.status_code for a in answers] == [200] * 24, [a.text for a in answers]
            await ws.close()
        finally:
            server.stop()


async def test_past_the_waiting_line_429_in_openai_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_key_handlers(monkeypatch)
    with reference_worker(latency_ms=400) as address:
        server = start_api_broker(
            tmp_path,
            [_chat_worker(address)],
            queue={"max_queued_per_user": 2, "max_waiting_requests_per_user": 3},
        )
        try:
            ws, key = await user_with_key(server)
            answers = await _burst(server, key, 8)
            statuses = sorted(a.status_code for a in answers)
            # 2 hold the share, 3 wait for it, the other 3 are told to retry later.
            assert statuses == [200] * 5 + [429] * 3, statuses
            refused = next(a for a in answers if a.status_code == 429)
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.json()["error"]["code"] == "queue_full"
            _assert_security_headers(refused)
            await ws.close()
        finally:
            server.stop()
