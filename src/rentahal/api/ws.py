"""WebSocket ``/ws``: identity, the connect sequence, and the frame loop."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketState

from rentahal.api.handshake import cookie_headers, origin_allowed
from rentahal.api.messages import HANDLERS, SYSOP_ONLY, Session, handle_error
from rentahal.broker import Broker
from rentahal.errors import StorageError
from rentahal.models import is_valid_guid
from rentahal.realms.connections import Connection
from rentahal.shares import client_address

logger = logging.getLogger(__name__)
router = APIRouter()

# A vision chunk carries up to ``chunk_size`` characters plus a small JSON envelope.
ENVELOPE_ALLOWANCE = 16 * 1024
BANNED_MESSAGE = "You are banned from using this service."


async def _send_connect_sequence(session: Session, fresh_cookie: bool) -> bool:
    """Steps 1-7 of the connect sequence; False when the user is banned."""
    broker, conn, user = session.broker, session.conn, session.user
    if fresh_cookie:
        conn.send({"type": "set_cookie", "name": "user_guid", "value": user.guid})
    conn.send({"type": "user_info", "data": user.model_dump()})
    if user.is_banned:
        conn.send({"type": "error", "message": BANNED_MESSAGE})
        return False
    # One read for both; a GUID made for this socket has no queries yet.
    rows = [] if fresh_cookie else await broker.views.recent_queries(user.guid, limit=10)
    for text in await broker.views.welcome_messages(user, rows):
        conn.send({"type": "sysop_message", "message": text})
    conn.send({"type": "previous_queries", "data": rows})
    conn.send({"type": "worker_update", "workers": broker.views.workers()})
    conn.send({"type": "huggingface_update", "models": broker.views.hf_models()})
    return True


def _frame_limit(broker: Broker) -> int:
    return broker.settings.websocket.max_message_size + ENVELOPE_ALLOWANCE


def _parse_frame(text: str, limit: int) -> dict[str, Any] | str:
    """The message object, or an error text for the client."""
    if len(text) > limit:
        return f"Message too large ({len(text)} bytes; limit {limit})"
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "Invalid JSON"
    if not isinstance(message, dict):
        return "Message must be a JSON object"
    if not isinstance(message.get("type"), str):
        return "Message must have a string 'type'"
    return message


async def _reader(session: Session) -> None:
    ws = session.conn.websocket
    limit = _frame_limit(session.broker)
    while not session.conn.closed:
        frame = await ws.receive()
        if frame["type"] == "websocket.disconnect":
            return
        text = frame.get("text")
        if text is None:
            session.conn.send({"type": "error", "message": "Binary frames are not supported"})
            continue
        parsed = _parse_frame(text, limit)
        if isinstance(parsed, str):
            session.conn.send({"type": "error", "message": parsed})
            continue
        await dispatch(session, parsed)


async def dispatch(session: Session, message: dict[str, Any]) -> None:
    """Run the handler of one message; errors become ``error`` frames."""
    kind = message["type"]
    handler = HANDLERS.get(kind)
    if handler is None:
        session.conn.send({"type": "error", "message": "Unknown message type"})
        return
    if kind in SYSOP_ONLY and not await _sysop_now(session):
        session.conn.send({"type": "error", "message": "Sysop rights are needed for this"})
        return
    try:
        await handler(session, message)
    except Exception as exc:  # the connection survives any handler failure
        handle_error(session, kind, exc)


async def _sysop_now(session: Session) -> bool:
    """Sysop rights of the socket, re-read for sockets that have them (they may be revoked).

    A plain user's socket is refused without a database read.
    """
    if not session.conn.is_sysop:
        return False
    try:
        return await session.broker.sysop_rights(session.user.guid)
    except StorageError:
        return False


async def websocket_endpoint(websocket: WebSocket) -> None:
    """One client session of the original protocol (plus our additions).

    Served as a plain Starlette route (see the end of this module): FastAPI's
    dependency solving (it parsed the query string) was ~8% of a connect.
    """
    broker: Broker = websocket.app.state.broker
    security = broker.settings.security
    if not origin_allowed(websocket, security):
        await websocket.close(1008)  # before accept: the handshake is answered 403
        return
    guid = websocket.cookies.get("user_guid")
    fresh = not is_valid_guid(guid)
    if fresh:
        guid = str(uuid.uuid4())
    assert guid is not None
    address = client_address.get() or "unknown"
    await websocket.accept(headers=cookie_headers(websocket, guid, security))
    if not broker.sockets.reserve_address(address):
        await _refuse(websocket, "Too many connections from your address")
        return
    try:
        await _serve(broker, websocket, address, guid, fresh)
    finally:
        broker.sockets.release_address(address)


async def _refuse(websocket: WebSocket, message: str) -> None:
    await websocket.send_text(orjson.dumps({"type": "error", "message": message}).decode())
    await websocket.close(1013)


async def _serve(
    broker: Broker, websocket: WebSocket, address: str, guid: str, fresh: bool
) -> None:
    if not broker.sockets.has_room():
        await _refuse(websocket, "Too many connections")
        return
    try:
        user = await broker.connect_user(guid, fresh=fresh)
    except Exception as exc:
        logger.error("cannot register user: %s", exc)
        await websocket.send_text(
            orjson.dumps(
                {"type": "error", "message": "The service cannot register users right now"}
            ).decode()
        )
        await websocket.close(1011)
        return
    conn = Connection(websocket, user.guid, user.is_sysop)
    conn.address = address
    conn.realm = broker.sockets.realm_for_user(user.guid)
    session = Session(broker=broker, conn=conn, user=user)
    writer = asyncio.create_task(conn.run_writer(), name=f"ws-writer:{guid[:8]}")
    broker.sockets.attach(conn)
    try:
        if await _send_connect_sequence(session, fresh):
            await broker.sockets.welcome(conn, fresh=fresh)
            await _reader(session)
    except WebSocketDisconnect:
        pass
    except Exception:
        logger.exception("websocket session of %s failed", guid)
    finally:
        broker.sockets.detach(conn)
        conn.close()
        try:
            async with asyncio.timeout(5):
                await writer
        except TimeoutError:
            writer.cancel()
        if websocket.client_state == WebSocketState.CONNECTED:
            try:
                await websocket.close()
            except Exception:
                logger.debug("close after session end failed", exc_info=True)


router.routes.append(WebSocketRoute("/ws", websocket_endpoint))
