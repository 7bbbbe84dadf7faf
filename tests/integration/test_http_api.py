"""Legacy HTTP routes ``/api/*``: key and cookie auth, answer shapes, errors, ledger rows.

Also holds the helpers the other HTTP API tests share: a broker with the API
routers and key handlers wired in, and a user with a key.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from rentahal.api import openai as openai_api
from rentahal.api import queries
from rentahal.api.keys_ws import KEY_HANDLERS
from rentahal.api.messages import HANDLERS
from rentahal.errors import (
    NoWorkerAvailable,
    QueryRejected,
    QueueFull,
    StorageError,
    WorkerRejected,
    WorkerTimeout,
)
from rentahal.models import AIWorker
from rentahal.storage.ledger import compute_cost
from tests.support.bad_worker import BadWorker
from tests.support.client import WSClient
from tests.support.servers import (
    BrokerServer,
    ThreadServer,
    broker_settings,
    demo_worker_records,
    seed,
)


def wire_api(app: FastAPI) -> None:
    """Include the API routers unless ``create_app`` already does."""
    for router in (queries.router, openai_api.router):
        if not any(getattr(route, "original_router", None) is router for route in app.routes):
            app.include_router(router)


def start_api_broker(
    tmp_path: Path, workers: list[AIWorker], **sections: dict[str, Any]
) -> BrokerServer:
    """A broker with the HTTP API routes, on a free port (the caller stops it)."""
    settings = broker_settings(tmp_path, **sections)
    seed(settings, workers)
    server = BrokerServer(settings)
    wire_api(server.app)
    server.start()
    return server


def with_key_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the key WebSocket messages available (until they are merged into HANDLERS)."""
    for kind, handler in KEY_HANDLERS.items():
        monkeypatch.setitem(HANDLERS, kind, handler)


async def user_with_key(server: BrokerServer, name: str = "test") -> tuple[WSClient, str]:
    """Connect a new user over the WebSocket and create an API key there."""
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    await client.send({"type": "create_api_key", "name": name})
    created = await client.expect("api_key_created")
    return client, created["key"]


def auth(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def cookie(guid: str) -> dict[str, str]:
    """The Cookie header of the original web client, holding ``user_guid``."""
    return {"Cookie": f"user_guid={guid}"}


def make_wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    """A mono 16-bit 440 Hz tone as WAV, written with the stdlib ``wave`` module."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def make_png_b64() -> str:
    """A small PNG, base64."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture
def api_server(
    tmp_path: Path, ref_workers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerServer]:
    """A broker with the reference workers, the API routes and the key messages."""
    with_key_handlers(monkeypatch)
    server = start_api_broker(tmp_path, demo_worker_records(ref_workers))
    yield server
    server.stop()


def _row(server: BrokerServer, guid: str, job_id: str) -> dict[str, Any]:
    rows = server.call(server.storage.recent_queries(guid, limit=50))
    (row,) = [r for r in rows if r["job_id"] == job_id]
    return row  # type: ignore[no-any-return]


def _assert_charged(server: BrokerServer, guid: str, body: dict[str, Any]) -> dict[str, Any]:
    row = _row(server, guid, body["job_id"])
    assert row["status"] == "done"
    assert row["cost"] == body["cost"]
    assert row["processing_time"] == body["processing_time"]
    assert body["cost"] == compute_cost(body["processing_time"], server.settings.costs)
    assert body["cost"] >= server.settings.costs.base_cost_per_query
    return row


OBJECT = {"format": "object"}


def _from_headers(response: httpx.Response) -> dict[str, Any]:
    """The figures a bare answer carries in its ``X-Rentahal-*`` headers."""
    h = response.headers
    return {
        "cost": float(h["x-rentahal-cost"]),
        "processing_time": float(h["x-rentahal-processing-time"]),
        "job_id": h["x-rentahal-job-id"],
        "worker": h.get("x-rentahal-worker"),
        "result_type": h["x-rentahal-result-type"],
    }


async def test_chat_answers_the_bare_string_with_figures_in_headers(
    api_server: BrokerServer,
) -> None:
    ws, key = await user_with_key(api_server)
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as http:
        response = await http.post(
            "/api/chat",
            # the original client sends worker names (here a stale one) as model_name
            json={"prompt": "bare please", "model_name": "default_worker"},
            headers=auth(key),
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, str) and "bare please" in body
    figures = _from_headers(response)
    assert figures["worker"] == "ref-chat" and figures["result_type"] == "text"
    row = _assert_charged(api_server, ws.guid or "", figures)
    assert (row["prompt"], row["model_name"]) == ("bare please", "default_worker")
    await ws.close()


async def test_bare_answers_of_vision_imagine_whisper_bark(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    wav = make_wav()
    async with httpx.AsyncClient(base_url=api_server.url, timeout=60, headers=auth(key)) as http:
        vision = await http.post(
            "/api/vision", json={"prompt": "what is this?", "image": make_png_b64()}
        )
        imagine = await http.post("/api/imagine", json={"prompt": "a red fox"})
        whisper = await http.post(
            "/api/whisper", json={"audio": base64.b64encode(wav).decode("ascii")}
        )
        bark = await http.post("/api/bark", json={"prompt": "say this aloud"})
    for response in (vision, imagine, whisper, bark):
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), str)
        _assert_charged(api_server, ws.guid or "", _from_headers(response))
    assert vision.json() and _from_headers(vision)["worker"] == "ref-vision"
    assert base64.b64decode(imagine.json()).startswith(b"\x89PNG")
    assert f"received {len(wav)} bytes of WAV audio" in whisper.json()
    audio = base64.b64decode(bark.json())
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert _from_headers(bark)["result_type"] == "audio"
    # The speech calls name the speech worker that answered, like queued queries.
    assert _from_headers(whisper)["worker"] == _from_headers(bark)["worker"] == "ref-speech"
    await ws.close()


async def test_chat_answers_the_object_on_opt_in_and_is_charged(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as http:
        response = await http.post(
            "/api/chat",
            params=OBJECT,
            json={"prompt": "hello there", "query_type": "imagine", "model_type": "worker_node"},
            headers=auth(key),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"result", "result_type", "processing_time", "cost", "job_id", "worker"} <= set(body)
    assert body["result_type"] == "text"  # the route, not the body, fixes the type
    assert "hello there" in body["result"]
    assert body["worker"] == "ref-chat"
    assert body["attempts"] == 1
    row = _assert_charged(api_server, ws.guid or "", body)
    assert row["query_type"] == "chat"
    assert row["prompt"] == "hello there"
    user = api_server.call(api_server.broker.get_user(ws.guid or ""))
    assert user.query_count == 1
    assert user.total_cost == pytest.approx(body["cost"])
    await ws.close()


async def test_vision_imagine_whisper_bark_objects_on_opt_in(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    guid = ws.guid or ""
    headers = {**auth(key), "Accept": "application/vnd.rentahal+json"}
    async with httpx.AsyncClient(base_url=api_server.url, timeout=60, headers=headers) as http:
        vision = await http.post(
            "/api/vision", json={"prompt": "what is this?", "image": make_png_b64()}
        )
        imagine = await http.post("/api/imagine", json={"prompt": "a red fox"})
        wav = make_wav()
        whisper = await http.post(
            "/api/whisper", json={"audio": base64.b64encode(wav).decode("ascii")}
        )
        bark = await http.post("/api/bark", json={"prompt": "say this aloud"})
    for response in (vision, imagine, whisper, bark):
        assert response.status_code == 200, response.text
    assert vision.json()["result_type"] == "text"
    assert vision.json()["worker"] == "ref-vision"
    assert imagine.json()["result_type"] == "image"
    assert base64.b64decode(imagine.json()["result"]).startswith(b"\x89PNG")
    assert whisper.json()["result_type"] == "text"
    assert f"received {len(wav)} bytes of WAV audio" in whisper.json()["result"]
    assert bark.json()["result_type"] == "audio"
    audio = base64.b64decode(bark.json()["result"])
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    types = {}
    for response in (vision, imagine, whisper, bark):
        row = _assert_charged(api_server, guid, response.json())
        types[response.request.url.path] = (row["query_type"], row["model_type"])
    assert types == {
        "/api/vision": ("vision", "worker_node"),
        "/api/imagine": ("imagine", "worker_node"),
        "/api/whisper": ("speech", "worker_node"),
        "/api/bark": ("speech", "speech"),
    }
    assert _row(api_server, guid, whisper.json()["job_id"])["prompt"] == whisper.json()["result"]
    user = api_server.call(api_server.broker.get_user(guid))
    assert user.query_count == 4
    await ws.close()


async def test_the_user_guid_cookie_identifies_an_existing_user(api_server: BrokerServer) -> None:
    ws, _key = await user_with_key(api_server)
    guid = ws.guid or ""
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as http:
        ok = await http.post("/api/chat", json={"prompt": "by cookie"}, headers=cookie(guid))
        not_uuid = await http.post("/api/chat", json={"prompt": "x"}, headers=cookie("../../etc"))
        unknown = await http.post(
            "/api/chat", json={"prompt": "x"}, headers=cookie(str(uuid.uuid4()))
        )
        # a form-like body (what another site could send) is not identified by the cookie
        not_json = await http.post(
            "/api/chat",
            content=b'{"prompt": "x"}',
            headers={"content-type": "text/plain", **cookie(guid)},
        )
        # an API key wins over the cookie
        other, other_key = await user_with_key(api_server, "other")
        keyed = await http.post(
            "/api/chat",
            params=OBJECT,
            json={"prompt": "by key"},
            headers={**auth(other_key), **cookie(guid)},
        )
    assert ok.status_code == 200, ok.text
    assert "by cookie" in ok.json()
    assert _row(api_server, guid, ok.headers["x-rentahal-job-id"])["prompt"] == "by cookie"
    for response, text in (
        (not_uuid, "not a valid UUID"),
        (unknown, "no known user"),
        (not_json, "Content-Type: application/json"),
    ):
        assert response.status_code == 401, response.text
        assert text in response.json()["detail"]
    assert keyed.status_code == 200
    assert _row(api_server, other.guid or "", keyed.json()["job_id"])["prompt"] == "by key"
    assert len(api_server.call(api_server.storage.recent_queries(guid))) == 1
    await ws.close()
    await other.close()


def _speech_figures(metrics_text: str, summary: dict[str, Any]) -> dict[str, float]:
    """The ``$SPEECH`` realm's counters in ``/metrics`` and ``/api/realms/summary``."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(metrics_text)
        for s in fam.samples
    }
    realm = (("realm", "$SPEECH"),)
    (row,) = [r for r in summary["realms"] if r["name"] == "$SPEECH"]
    return {
        "queries": samples.get(("rentahal_queries_total", realm), 0.0),
        "processing": samples.get(("rentahal_processing_time_seconds_count", realm), 0.0),
        "queue_wait": samples.get(("rentahal_queue_wait_seconds_count", realm), 0.0),
        "errors": samples.get(("rentahal_errors_total", realm), 0.0),
        "processed": row["processed"],
        "summary_errors": row["errors"],
    }


async def test_whisper_and_bark_count_like_queued_queries(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    async with httpx.AsyncClient(base_url=api_server.url, timeout=60, headers=auth(key)) as http:

        async def figures() -> dict[str, float]:
            metrics = (await http.get("/metrics")).text
            return _speech_figures(metrics, (await http.get("/api/realms/summary")).json())

        before = await figures()
        wav = base64.b64encode(make_wav()).decode("ascii")
        whisper = await http.post("/api/whisper", json={"audio": wav})
        bark = await http.post("/api/bark", json={"prompt": "count me"})
        after = await figures()
    assert whisper.status_code == 200 and bark.status_code == 200, (whisper.text, bark.text)
    assert {k: after[k] - before[k] for k in before} == {
        "queries": 2,
        "processing": 2,
        "queue_wait": 2,
        "errors": 0,
        "processed": 2,
        "summary_errors": 0,
    }
    for response in (whisper, bark):
        assert (
            _row(api_server, ws.guid or "", response.headers["x-rentahal-job-id"])["realm"]
            == "$SPEECH"
        )
    # The answers went to the HTTP caller, not to the user's open tab.
    assert [m for m in await ws.drain() if m["type"] in ("query_result", "error")] == []
    await ws.close()


async def test_missing_invalid_and_revoked_keys_are_401(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as http:
        missing = await http.post("/api/chat", json={"prompt": "hi"})
        wrong = await http.post("/api/chat", json={"prompt": "hi"}, headers=auth(key + "x"))
        basic = await http.post(
            "/api/chat", json={"prompt": "hi"}, headers={"Authorization": f"Basic {key}"}
        )
        await ws.send({"type": "revoke_api_key", "prefix": key[:12]})
        await ws.expect("api_key_revoked", prefix=key[:12])
        revoked = await http.post("/api/chat", json={"prompt": "hi"}, headers=auth(key))
    for response in (missing, wrong, basic, revoked):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert isinstance(response.json()["detail"], str)
    assert "Missing API key" in missing.json()["detail"]
    assert "Invalid or revoked" in revoked.json()["detail"]
    assert api_server.call(api_server.storage.recent_queries(ws.guid or "")) == []
    await ws.close()


async def test_banned_users_key_is_refused_at_once(api_server: BrokerServer) -> None:
    sysop, _ = await user_with_key(api_server, "sysop")
    victim, key = await user_with_key(api_server, "victim")
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30, headers=auth(key)) as http:
        assert (await http.post("/api/chat", json={"prompt": "before"})).status_code == 200
        await sysop.send({"type": "ban_user", "user_guid": victim.guid})
        await sysop.expect("user_banned", guid=victim.guid)
        banned = await http.post("/api/chat", json={"prompt": "after"})
        assert banned.status_code == 403
        assert banned.json()["detail"] == "You are banned from using this service."
        by_cookie = await http.post(
            "/api/chat",
            json={"prompt": "after"},
            headers={"Authorization": "", **cookie(victim.guid or "")},
        )
        assert by_cookie.status_code == 403
        assert by_cookie.json()["detail"] == "You are banned from using this service."
        await sysop.send({"type": "unban_user", "user_guid": victim.guid})
        await sysop.expect("user_unbanned", guid=victim.guid)
        assert (await http.post("/api/chat", json={"prompt": "again"})).status_code == 200
    await sysop.close()


async def test_rejections_are_4xx_with_detail(api_server: BrokerServer) -> None:
    ws, key = await user_with_key(api_server)
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30, headers=auth(key)) as http:
        empty = await http.post("/api/chat", json={"prompt": "   "})
        no_image = await http.post("/api/vision", json={"prompt": "what?"})
        bad_audio = await http.post("/api/whisper", json={"audio": "@@not base64@@"})
        not_json = await http.post("/api/chat", content=b"{", headers={"content-type": "json"})
    assert empty.status_code == 400 and empty.json()["detail"] == "The prompt is empty"
    assert no_image.status_code == 400 and "image" in no_image.json()["detail"]
    assert bad_audio.status_code == 400 and "base64" in bad_audio.json()["detail"]
    assert not_json.status_code == 422 and "detail" in not_json.json()
    rows = api_server.call(api_server.storage.recent_queries(ws.guid or ""))
    assert rows == []
    await ws.close()


async def test_worker_failure_is_502_recorded_uncharged_and_no_worker_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = BadWorker("500")
    worker_server = ThreadServer(bad.app())  # type: ignore[arg-type]
    worker_server.start()
    with_key_handlers(monkeypatch)
    record = AIWorker(
        name="bad", address=f"127.0.0.1:{worker_server.port}", type="chat", protocol="predict"
    )
    server = start_api_broker(tmp_path, [record])
    try:
        ws, key = await user_with_key(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            response = await http.post("/api/chat", json={"prompt": "hi"}, headers=auth(key))
            no_worker = await http.post("/api/imagine", json={"prompt": "x"}, headers=auth(key))
        assert response.status_code == 502
        assert "detail" in response.json()
        assert no_worker.status_code == 503
        assert "imagine" in no_worker.json()["detail"]
        (row,) = server.call(server.storage.recent_queries(ws.guid or ""))
        assert row["status"] == "failed"
        assert row["cost"] == 0.0
        await ws.close()
    finally:
        server.stop()
        worker_server.stop()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueueFull("full"), 429),
        (NoWorkerAvailable("none"), 503),
        (QueryRejected("bad"), 400),
        (WorkerTimeout("slow"), 504),
        (WorkerRejected("4xx"), 502),
        (StorageError("disk"), 503),
        (queries.ApiError(418, "teapot", "tea"), 418),
    ],
)
def test_error_statuses(error: Exception, status: int) -> None:
    assert queries.describe_error(error).status == status
