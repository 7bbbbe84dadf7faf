"""No frame or status route carries a user's GUID (their credential) to another user."""

from __future__ import annotations

import json

import httpx

from tests.support.servers import BrokerServer


async def test_messages_about_a_user_reach_sysops_and_that_user_only(
    connect, broker: BrokerServer
) -> None:
    sysop = await connect()  # the first user is the sysop
    victim = await connect()
    bystander = await connect()
    assert victim.guid and sysop.guid and bystander.guid

    await sysop.send({"type": "terminate_query", "user_guid": victim.guid})
    assert (await sysop.expect("query_terminated"))["guid"] == victim.guid
    assert (await victim.expect("query_terminated"))["guid"] == victim.guid

    await sysop.send({"type": "ban_user", "user_guid": victim.guid})
    assert (await sysop.expect("user_banned"))["guid"] == victim.guid
    await sysop.send({"type": "unban_user", "user_guid": victim.guid})
    assert (await sysop.expect("user_unbanned"))["guid"] == victim.guid

    seen = json.dumps(bystander.seen + await bystander.drain(0.5))
    assert victim.guid not in seen
    assert sysop.guid not in seen

    async with httpx.AsyncClient(base_url=broker.url, timeout=10) as http:
        for route in (
            "/debug/system_status",
            "/api/realms/summary",
            "/api/federation/status",
            "/metrics",
        ):
            body = (await http.get(route)).text
            for guid in (sysop.guid, victim.guid, bystander.guid):
                assert guid not in body, f"{route} shows a user's GUID"
