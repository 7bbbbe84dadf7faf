"""RealmConnectionManager: the socket count it keeps follows adds and removes."""

from __future__ import annotations

from starlette.types import Message
from starlette.websockets import WebSocket

from rentahal.realms.connections import Connection, RealmConnectionManager


async def _receive() -> Message:
    return {"type": "websocket.disconnect"}


async def _send(message: Message) -> None:
    return None


def _conn(guid: str, realm: str | None = None) -> Connection:
    conn = Connection(WebSocket({"type": "websocket"}, _receive, _send), guid, is_sysop=False)
    conn.realm = realm
    return conn


def test_count_follows_adds_and_removes_of_many_users() -> None:
    manager = RealmConnectionManager()
    a1, a2, b1 = _conn("a"), _conn("a", "r"), _conn("b", "r")
    for conn in (a1, a2, b1):
        manager.add(conn)
    assert manager.count == 3
    assert manager.peak == 3
    assert sorted(manager.users()) == ["a", "b"]
    assert manager.realm_counts() == {"r": 2}
    manager.remove(a1)
    assert manager.count == 2
    manager.remove(a2)
    assert manager.count == 1
    assert manager.users() == ["b"]
    assert manager.peak == 3  # the most at once stays


def test_adding_or_removing_a_socket_twice_counts_once() -> None:
    manager = RealmConnectionManager()
    conn = _conn("a")
    manager.add(conn)
    manager.add(conn)
    assert manager.count == 1
    manager.remove(conn)
    manager.remove(conn)
    manager.remove(_conn("never-added"))
    assert manager.count == 0
    assert manager.users() == []
