"""Every malformed HTTP body gets a 4xx with a JSON error, never a 5xx or a logged traceback."""

from __future__ import annotations

import logging
import random

import httpx
import pytest

from tests.integration.test_http_api import auth, user_with_key
from tests.support.malformed import malformed_bodies
from tests.support.servers import BrokerServer

SEED = 20261201
BODIES = 1500


@pytest.mark.timeout(120)
async def test_malformed_bodies_get_json_4xx(
    broker: BrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    client_ws, key = await user_with_key(broker)
    rng = random.Random(SEED)
    failures: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:
            for i, (path, content_type, body) in enumerate(malformed_bodies(rng, BODIES)):
                headers = {"Content-Type": content_type} if content_type else {}
                if i % 2:
                    headers.update(auth(key))
                response = await client.post(path, content=body, headers=headers)
                ok = 400 <= response.status_code < 500
                try:
                    response.json()
                except ValueError:
                    ok = False
                if not ok:
                    failures.append(f"{path} {body[:60]!r}: {response.status_code}")
    finally:
        await client_ws.close()
    assert not failures, f"{len(failures)} bad answers, first: {failures[:5]}"
    tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks[:5]]
