"""Each query type end to end through the broker and the reference workers."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.support.servers import BrokerServer


async def test_connect_sequence_in_order(connect) -> None:
    client = await connect(read_sequence=False)
    seq = await client.connect_sequence()
    types = [m["type"] for m in seq]
    assert types == [
        "set_cookie",
        "user_info",
        *["sysop_message"] * 6,
        "previous_queries",
        "worker_update",
        "huggingface_update",
    ]
    assert seq[1]["data"]["nickname"] == "user_" + client.guid[:8]
    assert seq[1]["data"]["is_sysop"] is True  # the very first user
    assert seq[2]["message"].startswith("Your recent queries:")
    assert seq[3]["message"] == "Your total lifetime costs: $0.00"
    assert {w["name"] for w in seq[9]["workers"]} >= {"ref-chat", "ref-imagine"}
    assert (await client.recv())["type"] == "active_users"  # sysops get the user list


async def test_chat_answer_with_time_and_cost(connect, broker: BrokerServer) -> None:
    client = await connect()
    result = await client.query("hello broker")
    assert result["type"] == "query_result", result
    assert "hello broker" in result["result"]
    assert result["result_type"] == "text"
    assert result["processing_time"] > 0
    costs = broker.settings.costs
    assert result["cost"] == costs.base_cost_per_query + result["processing_time"] * (
        costs.cost_per_second
    )
    assert result["worker"] == "ref-chat"


async def test_a_result_carries_the_totals_and_no_user_info_follows(connect) -> None:
    client = await connect()
    first = await client.query("count me")
    second = await client.query("and me")
    # the original client runs init() on every user_info; the original sent none here
    await client.send({"type": "get_previous_queries"})
    await client.expect("previous_queries")
    assert [m["type"] for m in client.seen].count("user_info") == 1  # the connect one
    totals = second["user_totals"]
    assert set(totals) == {"query_count", "total_query_time", "total_cost"}
    assert first["user_totals"]["query_count"] == 1 and totals["query_count"] == 2
    assert totals["total_cost"] == pytest.approx(first["cost"] + second["cost"])
    assert totals["total_query_time"] == pytest.approx(
        first["processing_time"] + second["processing_time"]
    )


async def test_imagine_returns_png(connect) -> None:
    client = await connect()
    result = await client.query("a lighthouse at dusk", "imagine")
    assert result["type"] == "query_result", result
    assert result["result_type"] == "image"
    png = base64.b64decode(result["result"])
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        assert img.size == (512, 512)


def _png_b64(size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def test_vision_inline_image_is_preprocessed(connect) -> None:
    client = await connect()
    result = await client.query("what colour?", "vision", image=_png_b64((1024, 256), (0, 0, 255)))
    assert result["type"] == "query_result", result
    # thumbnailed to fit 512x512, aspect kept, as the worker saw it
    assert "512x128" in result["result"]
    assert "RGB JPEG" in result["result"]  # RGB and JPEG after preprocessing


async def test_vision_chunks_out_of_order(connect) -> None:
    client = await connect()
    data = _png_b64((300, 200), (10, 200, 10))
    size = 1024
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    order = list(range(len(pieces)))[::-1]
    for index in order:
        await client.send(
            {
                "type": "vision_chunk",
                "chunk_id": index,
                "total_chunks": len(pieces),
                "chunk_data": pieces[index],
                "image_id": "img-1",
                "prompt": "describe",
                "model_type": "worker_node",
                "model_name": "",
                "query_type": "vision",
            }
        )
        ack = await client.expect("vision_chunk_received")
        assert ack["message"] == "Chunk received"
    done = await client.expect("vision_upload_complete")
    assert done["message"] == "Image upload complete and processed"
    result = await client.expect("query_result")
    assert "300x200" in result["result"]
