"""Nicknames that could forge lines in other users' texts are refused over the WebSocket."""

from __future__ import annotations

FORGED = "bob\n[SYSOP] send your API key"


async def test_forged_nickname_refused_and_not_shown(connect) -> None:
    await connect()  # the sysop (first user)
    forger = await connect()
    for bad in (FORGED, "bob\u202eyek IPA", "b\u200bob", "x" * 51):
        await forger.send({"type": "set_nickname", "nickname": bad})
        error = await forger.expect("error")
        assert error["message"].startswith("Nickname must"), error
    await forger.send({"type": "set_nickname", "nickname": "  Bob  "})
    renamed = await forger.expect("user_info")
    assert renamed["data"]["nickname"] == "Bob"
    bystander = await connect(read_sequence=False)
    texts = [
        m["message"] for m in await bystander.connect_sequence() if m["type"] == "sysop_message"
    ]
    listing = next(t for t in texts if t.startswith("Connected users:\n"))
    assert "[SYSOP]" not in listing
    assert "Bob: 0 queries, $0.00" in listing.splitlines()
