"""Handlers of client-to-server WebSocket messages (PROTOCOL.md section 3 + ours)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from rentahal.api.keys_ws import KEY_HANDLERS
from rentahal.broker import Broker
from rentahal.errors import (
    BrokerError,
    PrefixMoving,
    QueryRejected,
    ShardUnavailable,
    StorageError,
)
from rentahal.media import decode_audio
from rentahal.models import AIWorker, HuggingFaceModel, Job, Query, User, is_valid_guid
from rentahal.realms.connections import Connection

logger = logging.getLogger(__name__)

MAX_SYSOP_MESSAGE = 2000
MAX_TTS_CHARS = 5000


@dataclass(slots=True)
class Session:
    """One socket's view: the broker, the connection and the (cached) user."""

    broker: Broker
    conn: Connection
    user: User
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message to this socket."""
        self.conn.send(message)

    def spawn(self, kind: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a slow handler beside the reader; its errors reach the client."""

        async def _guarded() -> None:
            try:
                await coro
            except Exception as exc:
                handle_error(self, kind, exc)

        task = asyncio.create_task(_guarded(), name=f"ws-{kind}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


Handler = Callable[[Session, dict[str, Any]], Awaitable[None]]


def handle_error(session: Session, kind: str, exc: BaseException) -> None:
    """Turn a handler failure into a readable ``error`` frame."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        text = f"Invalid {kind}: {where}: {first['msg']}"
    elif isinstance(exc, (ShardUnavailable, PrefixMoving)):
        text = str(exc)  # names no shard, only that the user's own data is affected
    elif isinstance(exc, StorageError):
        logger.error("storage error in %s: %s", kind, exc)
        text = "The database is unavailable; please try again later"
    elif isinstance(exc, BrokerError):
        text = str(exc)
    else:
        logger.exception("handler %s failed", kind, exc_info=exc)
        text = f"Internal error while handling {kind}"
    session.send({"type": "error", "message": text})


class _SubmitQuery(BaseModel):
    query: Query


class _VisionChunk(BaseModel):
    chunk_id: int
    total_chunks: int
    chunk_data: str
    image_id: str
    prompt: str = ""
    model_type: str = "worker_node"
    model_name: str = ""


class _Audio(BaseModel):
    audio: str


class _Text(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TTS_CHARS)


class _Nickname(BaseModel):
    nickname: str


class _Worker(BaseModel):
    worker: AIWorker


class _WorkerName(BaseModel):
    worker_name: str


class _OptionalWorkerName(BaseModel):
    worker_name: str | None = None


class _HfModel(BaseModel):
    model: HuggingFaceModel


class _ModelName(BaseModel):
    model_name: str


class _UserGuid(BaseModel):
    user_guid: str


class _SysopMessage(BaseModel):
    message: str = Field(min_length=1, max_length=MAX_SYSOP_MESSAGE)


class _JobId(BaseModel):
    job_id: str = Field(min_length=1, max_length=64)


async def _queued_message(session: Session, job: Job, depth: int) -> dict[str, Any]:
    """``query_queued``; the job is queued already, so a failing count must not hide that.

    ``depth`` is the queue depth :meth:`Broker.submit_counted` read (no second read).
    """
    position = 0
    try:
        position = await session.broker.position_of(job.job_id) or 0
    except BrokerError as exc:
        logger.warning("queue figures for %s unavailable: %s", job.job_id, exc)
    return {
        "type": "query_queued",
        "job_id": job.job_id,
        "realm": job.realm,
        "position": position,
        "queue_depth": depth,
    }


async def submit_query(session: Session, message: dict[str, Any]) -> None:
    """Queue a query."""
    query = _SubmitQuery.model_validate(message).query
    job, depth = await session.broker.submit_counted(session.user.guid, query)
    session.send(await _queued_message(session, job, depth))


async def vision_chunk(session: Session, message: dict[str, Any]) -> None:
    """Collect a slice of a chunked image; queue the vision query on the last one."""
    chunk = _VisionChunk.model_validate(message)
    whole = session.broker.sockets.add_upload_chunk(
        session.user.guid,
        chunk.image_id,
        chunk.chunk_id,
        chunk.total_chunks,
        chunk.chunk_data,
        owner=session.conn.id,
        address=session.conn.address,
    )
    session.send({"type": "vision_chunk_received", "message": "Chunk received"})
    if whole is None:
        return
    query = Query(
        prompt=chunk.prompt,
        query_type="vision",
        model_type=chunk.model_type,
        model_name=chunk.model_name,
        image=whole,
    )
    job, depth = await session.broker.submit_counted(session.user.guid, query)
    session.send(
        {"type": "vision_upload_complete", "message": "Image upload complete and processed"}
    )
    session.send(await _queued_message(session, job, depth))


async def speech_to_text(session: Session, message: dict[str, Any]) -> None:
    """Transcribe audio on a speech worker."""
    audio = decode_audio(_Audio.model_validate(message).audio)

    async def run() -> None:
        text = await session.broker.transcribe(audio)
        session.send({"type": "transcription_result", "text": text})

    session.spawn("speech_to_text", run())


async def text_to_speech(session: Session, message: dict[str, Any]) -> None:
    """Speak text on a speech worker."""
    text = _Text.model_validate(message).text

    async def run() -> None:
        audio = await session.broker.speak(text)
        session.send({"type": "speech_result", "audio": base64.b64encode(audio).decode("ascii")})

    session.spawn("text_to_speech", run())


async def set_nickname(session: Session, message: dict[str, Any]) -> None:
    """Rename the user."""
    nickname = _Nickname.model_validate(message).nickname
    session.user = await session.broker.set_nickname(session.user.guid, nickname)
    session.send({"type": "user_info", "data": session.user.model_dump()})


async def get_previous_queries(session: Session, message: dict[str, Any]) -> None:
    """The user's last 10 queries."""
    rows = await session.broker.views.recent_queries(session.user.guid, limit=10)
    session.send({"type": "previous_queries", "data": rows})


async def get_pending_jobs(session: Session, message: dict[str, Any]) -> None:
    """Which of the user's queries are still waiting or running (e.g. after a reconnect)."""
    jobs = await session.broker.pending_jobs(session.user.guid)
    session.send({"type": "pending_jobs", "job_ids": jobs})


async def pong(session: Session, message: dict[str, Any]) -> None:
    """The client's heartbeat; nothing to answer."""


async def cancel_query(session: Session, message: dict[str, Any]) -> None:
    """Cancel one of the user's own queued or running queries."""
    job_id = _JobId.model_validate(message).job_id
    if not await session.broker.cancel(session.user.guid, job_id):
        raise QueryRejected("No such query of yours is waiting or running")


async def get_stats(session: Session, message: dict[str, Any]) -> None:
    """System totals, all users, worker health."""
    views = session.broker.views
    session.send({"type": "system_stats", "data": await views.system_stats()})
    users = [u.model_dump() for u in await views.users()]
    session.send({"type": "user_stats", "data": users})
    session.send({"type": "worker_health", "data": views.workers()})


async def add_worker(session: Session, message: dict[str, Any]) -> None:
    """Register a worker."""
    await session.broker.fleet.add_worker(_Worker.model_validate(message).worker)


async def remove_worker(session: Session, message: dict[str, Any]) -> None:
    """Remove a worker."""
    name = _WorkerName.model_validate(message).worker_name
    if not await session.broker.fleet.remove_worker(name):
        raise QueryRejected(f"No worker named '{name}'")


async def reset_worker_health(session: Session, message: dict[str, Any]) -> None:
    """Clear blacklist and circuit of one worker (or all)."""
    name = _OptionalWorkerName.model_validate(message).worker_name
    if not await session.broker.fleet.reset_health(name) and name:
        raise QueryRejected(f"No worker named '{name}'")


async def add_huggingface_model(session: Session, message: dict[str, Any]) -> None:
    """Make a Hugging Face model available."""
    await session.broker.fleet.add_hf_model(_HfModel.model_validate(message).model)


async def remove_huggingface_model(session: Session, message: dict[str, Any]) -> None:
    """Remove a Hugging Face model."""
    name = _ModelName.model_validate(message).model_name
    if not await session.broker.fleet.remove_hf_model(name):
        raise QueryRejected(f"No Hugging Face model named '{name}'")


def _target_guid(message: dict[str, Any]) -> str:
    guid = _UserGuid.model_validate(message).user_guid
    if not is_valid_guid(guid):
        raise QueryRejected("user_guid must be a UUID")
    return guid


async def ban_user(session: Session, message: dict[str, Any]) -> None:
    """Ban a user (their live sessions close)."""
    guid = _target_guid(message)
    if guid == session.user.guid:
        raise QueryRejected("You cannot ban yourself")
    if not await session.broker.set_banned(guid, True):
        raise QueryRejected("No such user")


async def unban_user(session: Session, message: dict[str, Any]) -> None:
    """Lift a ban."""
    if not await session.broker.set_banned(_target_guid(message), False):
        raise QueryRejected("No such user")


async def terminate_query(session: Session, message: dict[str, Any]) -> None:
    """Drop a user's queued and running queries."""
    await session.broker.terminate_user(_target_guid(message))


async def sysop_message(session: Session, message: dict[str, Any]) -> None:
    """Broadcast a message to everyone."""
    text = _SysopMessage.model_validate(message).message
    await session.broker.broadcast({"type": "sysop_message", "message": text})


HANDLERS: dict[str, Handler] = {
    "submit_query": submit_query,
    "vision_chunk": vision_chunk,
    "speech_to_text": speech_to_text,
    "text_to_speech": text_to_speech,
    "set_nickname": set_nickname,
    "get_previous_queries": get_previous_queries,
    "get_pending_jobs": get_pending_jobs,
    "pong": pong,
    "cancel_query": cancel_query,
    "get_stats": get_stats,
    "add_worker": add_worker,
    "remove_worker": remove_worker,
    "reset_worker_health": reset_worker_health,
    "add_huggingface_model": add_huggingface_model,
    "remove_huggingface_model": remove_huggingface_model,
    "ban_user": ban_user,
    "unban_user": unban_user,
    "terminate_query": terminate_query,
    "sysop_message": sysop_message,
    **KEY_HANDLERS,
}

SYSOP_ONLY = frozenset(
    {
        "get_stats",
        "add_worker",
        "remove_worker",
        "reset_worker_health",
        "add_huggingface_model",
        "remove_huggingface_model",
        "ban_user",
        "unban_user",
        "terminate_query",
        "sysop_message",
    }
)
