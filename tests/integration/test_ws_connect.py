"""The connect sequence of a new GUID and of a returning one (the cookie)."""

from __future__ import annotations

import asyncio

from tests.support.client import WSClient

SIMULTANEOUS = 24


async def test_a_new_guid_then_the_same_user_back_with_its_cookie(broker_factory) -> None:
    server = broker_factory()
    first = await WSClient.connect(server.ws_url)
    sequence = await first.connect_sequence()
    await first.close()
    kinds = [m["type"] for m in sequence]
    assert kinds[0] == "set_cookie"
    guid = sequence[0]["value"]
    info = next(m for m in sequence if m["type"] == "user_info")["data"]
    assert info["guid"] == guid
    assert next(m for m in sequence if m["type"] == "previous_queries")["data"] == []

    again = await WSClient.connect(server.ws_url, guid=guid)
    back = await again.connect_sequence()
    await again.close()
    assert "set_cookie" not in [m["type"] for m in back]
    assert next(m for m in back if m["type"] == "user_info")["data"] == info
    assert len(server.call(server.storage.list_users())) == 1


async def test_many_new_users_at_once_each_get_their_own_row(broker_factory) -> None:
    server = broker_factory()
    clients = await asyncio.gather(*(WSClient.connect(server.ws_url) for _ in range(SIMULTANEOUS)))
    try:
        sequences = await asyncio.gather(*(c.connect_sequence() for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    guids = {s[0]["value"] for s in sequences}
    assert len(guids) == SIMULTANEOUS
    for sequence in sequences:  # each socket hears only of its own GUID
        others = guids - {sequence[0]["value"]}
        assert not any(g in str(m) for m in sequence for g in others)
    stored = server.call(server.storage.list_users())
    assert {u.guid for u in stored} == guids
