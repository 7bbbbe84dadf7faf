"""Sysop operations over the WebSocket, and what other users see of them."""

from __future__ import annotations

import uuid

from tests.support.servers import BrokerServer


async def test_non_sysop_is_refused(connect) -> None:
    await connect()  # the first user is the sysop
    user = await connect()
    await user.send({"type": "get_stats"})
    error = await user.expect("error")
    assert error["message"] == "Sysop rights are needed for this"


async def test_get_stats(connect) -> None:
    sysop = await connect()
    await sysop.query("count me")
    await sysop.send({"type": "get_stats"})
    stats = await sysop.expect("system_stats")
    assert stats["data"]["total_queries"] == 1
    users = await sysop.expect("user_stats")
    assert [u["query_count"] for u in users["data"]] == [1]
    health = await sysop.expect("worker_health")
    assert {w["name"] for w in health["data"]} == {
        "ref-chat",
        "ref-vision",
        "ref-imagine",
        "ref-speech",
    }


async def test_add_and_remove_worker_broadcast(connect, broker: BrokerServer) -> None:
    sysop = await connect()
    other = await connect()
    worker = {"name": "extra", "address": "127.0.0.1:1", "type": "chat", "api_key": "s3cret"}
    await sysop.send({"type": "add_worker", "worker": worker})
    update = await other.expect("worker_update")
    extra = next(w for w in update["workers"] if w["name"] == "extra")
    assert extra["protocol"] == "predict"
    assert extra["api_key"] == "***"  # never sent to clients
    await sysop.send({"type": "remove_worker", "worker_name": "extra"})
    update = await other.expect("worker_update")
    assert "extra" not in {w["name"] for w in update["workers"]}
    await sysop.send({"type": "remove_worker", "worker_name": "extra"})
    assert (await sysop.expect("error"))["message"] == "No worker named 'extra'"


async def test_sysop_message_reaches_everyone(connect) -> None:
    sysop = await connect()
    users = [await connect() for _ in range(3)]
    await sysop.send({"type": "sysop_message", "message": "maintenance at noon"})
    for user in [sysop, *users]:
        got = await user.expect("sysop_message", message="maintenance at noon")
        assert got["message"] == "maintenance at noon"


async def test_ban_closes_live_session_and_blocks_reconnect(connect, broker: BrokerServer) -> None:
    sysop = await connect()
    victim = await connect()
    await sysop.send({"type": "ban_user", "user_guid": victim.guid})
    error = await victim.expect("error")
    assert error["message"] == "You are banned from using this service."
    await victim.ws.wait_closed()
    banned = await sysop.expect("user_banned")
    assert banned["guid"] == victim.guid
    again = await connect(victim.guid, read_sequence=False)
    assert (await again.recv())["type"] == "user_info"
    assert (await again.recv())["message"] == "You are banned from using this service."
    await again.ws.wait_closed()
    await sysop.send({"type": "unban_user", "user_guid": victim.guid})
    await sysop.expect("user_unbanned", guid=victim.guid)
    back = await connect(victim.guid)
    assert (await back.query("i am back"))["type"] == "query_result"


async def test_ban_unknown_or_malformed_guid(connect) -> None:
    sysop = await connect()
    await sysop.send({"type": "ban_user", "user_guid": "<script>"})
    assert (await sysop.expect("error"))["message"] == "user_guid must be a UUID"
    await sysop.send({"type": "ban_user", "user_guid": str(uuid.uuid4())})
    assert (await sysop.expect("error"))["message"] == "No such user"


async def test_huggingface_models(connect) -> None:
    sysop = await connect()
    await sysop.send({"type": "add_huggingface_model", "model": {"name": "gpt2", "type": "chat"}})
    update = await sysop.expect("huggingface_update")
    assert update["models"] == [{"name": "gpt2", "type": "chat"}]
    await sysop.send({"type": "remove_huggingface_model", "model_name": "gpt2"})
    assert (await sysop.expect("huggingface_update"))["models"] == []
