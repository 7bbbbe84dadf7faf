"""Bad input gets a clear error; the connection and the server survive; nothing is lost."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.support.client import WSClient
from tests.support.servers import BrokerServer


async def _still_works(client: WSClient) -> None:
    result = await client.query("still alive?")
    assert result["type"] == "query_result", result


CASES = [
    ("not json at all", "Invalid JSON"),
    ("[1, 2, 3]", "Message must be a JSON object"),
    ('"just a string"', "Message must be a JSON object"),
    ("{}", "Message must have a string 'type'"),
    ('{"type": 42}', "Message must have a string 'type'"),
    ('{"type": "launch_missiles"}', "Unknown message type"),
    ('{"type": "submit_query"}', "Invalid submit_query: query: Field required"),
    ('{"type": "submit_query", "query": "chat"}', "Invalid submit_query: query:"),
    (
        '{"type": "submit_query", "query": {"prompt": 5, "query_type": "chat"}}',
        "Invalid submit_query: query.prompt: Input should be a valid string",
    ),
    (
        '{"type": "submit_query", "query": {"prompt": "x", "query_type": "dance"}}',
        "Invalid submit_query: query.query_type:",
    ),
    ('{"type": "set_nickname"}', "Invalid set_nickname: nickname: Field required"),
    ('{"type": "cancel_query", "job_id": ""}', "Invalid cancel_query: job_id:"),
    ('{"type": "vision_chunk", "chunk_id": "a"}', "Invalid vision_chunk:"),
    ('{"type": "speech_to_text", "audio": "%%%"}', "Invalid audio data: not valid base64"),
]


@pytest.mark.parametrize(("frame", "expected"), CASES)
async def test_malformed_frames(connect, frame: str, expected: str) -> None:
    client = await connect()
    await client.send(frame)
    error = await client.expect("error")
    assert error["message"].startswith(expected), error
    await _still_works(client)


async def test_prompt_over_limit(broker_factory, ref_workers) -> None:
    from tests.support.servers import demo_worker_records

    server = broker_factory(demo_worker_records(ref_workers), queue={"max_prompt_chars": 100})
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    error = await client.query("x" * 101)
    assert error["message"] == "Prompt too long (limit 100 characters)"
    await _still_works(client)
    await client.close()


async def test_frame_over_max_message_size(broker_factory, ref_workers) -> None:
    from tests.support.servers import demo_worker_records

    server = broker_factory(demo_worker_records(ref_workers), websocket={"max_message_size": 4096})
    client = await WSClient.connect(server.ws_url)
    await client.connect_sequence()
    limit = 4096 + 16 * 1024
    await client.send(json.dumps({"type": "pong", "pad": "x" * limit}))
    error = await client.expect("error")
    assert error["message"].startswith("Message too large")
    assert str(limit) in error["message"]
    await _still_works(client)
    await client.close()


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("@@not base64@@", "Invalid image data: not valid base64"),
        (base64.b64encode(b"plain text, not a picture").decode(), "Invalid image data: not a"),
        ("", "A vision query needs an image"),
    ],
)
async def test_bad_images(connect, image: str, expected: str) -> None:
    client = await connect()
    error = await client.query("what?", "vision", image=image)
    assert error["type"] == "error"
    assert error["message"].startswith(expected), error
    await _still_works(client)


def _chunk(image_id: str, index: int, total: int, data: str) -> dict[str, object]:
    return {
        "type": "vision_chunk",
        "chunk_id": index,
        "total_chunks": total,
        "chunk_data": data,
        "image_id": image_id,
        "prompt": "p",
        "model_type": "worker_node",
        "model_name": "",
    }


async def test_million_chunks_refused(connect) -> None:
    client = await connect()
    await client.send(_chunk("big", 0, 1_000_000, "AAAA"))
    assert (await client.expect("error"))["message"] == "total_chunks must be between 1 and 64"
    await client.send(_chunk("big", 5, 3, "AAAA"))
    assert (await client.expect("error"))["message"] == "chunk_id must be between 0 and 2"
    await _still_works(client)


async def test_chunks_are_namespaced_per_user(connect) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    half = len(data) // 2
    alice = await connect()
    mallory = await connect()
    await alice.send(_chunk("shared-id", 0, 2, data[:half]))
    await alice.expect("vision_chunk_received")
    # Mallory's chunk with the same image_id lands in her own upload, not Alice's.
    await mallory.send(_chunk("shared-id", 1, 2, "QUJD"))
    await mallory.expect("vision_chunk_received")
    await alice.send(_chunk("shared-id", 1, 2, data[half:]))
    await alice.expect("vision_upload_complete")
    result = await alice.expect("query_result")
    assert "64x48" in result["result"]


async def test_upload_count_limit(connect, broker: BrokerServer) -> None:
    client = await connect()
    limit = broker.settings.chunking.max_uploads_per_user
    for i in range(limit):
        await client.send(_chunk(f"u{i}", 0, 2, "AAAA"))
        await client.expect("vision_chunk_received")
    await client.send(_chunk("one-too-many", 0, 2, "AAAA"))
    error = await client.expect("error")
    assert error["message"] == f"Too many uploads in progress (limit {limit})"


async def test_invalid_guid_cookie_gets_a_fresh_one(broker: BrokerServer) -> None:
    for cookie in ("not-a-uuid", "<script>alert(1)</script>", "1" * 500):
        client = await WSClient.connect(broker.ws_url, cookie)
        first = await client.recv()
        assert first["type"] == "set_cookie"
        assert first["value"] != cookie and len(first["value"]) == 36
        await client.close()
