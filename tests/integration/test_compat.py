"""The same WebSocket session in realm mode and in legacy mode gives the same messages."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from PIL import Image

from tests.support.client import WSClient
from tests.support.servers import BrokerServer, demo_worker_records

# Fields that carry ids, timings or the routing detail (which queue ran the query).
IGNORED_KEYS = {
    "job_id",
    "value",
    "guid",
    "processing_time",
    "cost",
    "queue_wait",
    "realm",
    "last_active",
    "timestamp",
    "id",
    "address",
    "total_query_time",
    "total_cost",
    "eta_s",
    "users",
    "nickname",
    "user_guid",
    "queue_depth",  # how many jobs are still counted as running is a matter of timing
}
# Messages whose number and timing depend on scheduling, not on the protocol.
TIMING_TYPES = {"queue_update", "queue_position", "active_users"}
UUID = re.compile(r"[0-9a-f]{8}(-?[0-9a-f]{4}){3}-?[0-9a-f]{12}|user_[0-9a-f]{8}")
NUMBER = re.compile(r"\d+(\.\d+)?")


def normalize(value: Any) -> Any:
    """Drop ids and timings; mask GUIDs and figures inside texts."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in sorted(value.items()) if k not in IGNORED_KEYS}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        if len(value) > 200:  # base64 images: same prompt, same picture
            return f"<{len(value)} chars>"
        return NUMBER.sub("N", UUID.sub("GUID", value))
    if isinstance(value, float):
        return "N"
    return value


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (320, 200), (250, 200, 0)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _session(server: BrokerServer) -> list[dict[str, Any]]:
    client = await WSClient.connect(server.ws_url)
    seen = await client.connect_sequence()
    steps: list[dict[str, Any] | str] = [
        {"type": "set_nickname", "nickname": "tester"},
        {"type": "submit_query", "query": {"prompt": "hello", "query_type": "chat"}},
        {"type": "submit_query", "query": {"prompt": "a boat", "query_type": "imagine"}},
        {
            "type": "submit_query",
            "query": {"prompt": "what?", "query_type": "vision", "image": _png()},
        },
        {"type": "get_previous_queries"},
        {"type": "get_stats"},
        {"type": "no_such_message"},
        "this is not json",
        {"type": "submit_query", "query": {"prompt": "x", "query_type": "teleport"}},
    ]
    for step in steps:
        await client.send(step)
        if (
            isinstance(step, dict)
            and step["type"] == "submit_query"
            and (step["query"]["query_type"] != "teleport")
        ):
            await client.expect("query_result", timeout_s=20)
        elif isinstance(step, dict) and step["type"] == "get_stats":
            await client.expect("worker_health")
        else:
            await client.expect_any(("user_info", "previous_queries", "error"))
    await client.close()
    assert seen[0]["type"] == "set_cookie"
    return [normalize(m) for m in client.seen if m.get("type") not in TIMING_TYPES]


async def test_realm_and_legacy_sessions_match(broker_factory, ref_workers) -> None:
    realms = broker_factory(demo_worker_records(ref_workers))
    legacy = broker_factory(demo_worker_records(ref_workers), broker={"realms_enabled": False})
    assert realms.broker.realms is not None and legacy.broker.realms is None
    realm_messages = await _session(realms)
    legacy_messages = await _session(legacy)
    assert [m["type"] for m in realm_messages] == [m["type"] for m in legacy_messages]
    for a, b in zip(realm_messages, legacy_messages, strict=True):
        assert a == b
    types = [m["type"] for m in realm_messages]
    assert types.count("query_result") == 3
    assert types.count("error") == 3  # unknown type, bad JSON, bad query type
