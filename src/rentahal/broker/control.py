"""Control messages between the nodes of a cluster: one typed union, handlers per operation.

Every message names its ``origin`` node, and one rule holds for all of them: a
node applies its own change before it publishes it, so it ignores its own
messages. A message with a ``node`` is meant for that node only (a cancel goes
to the node running the job).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from rentahal.bus.base import Bus

logger = logging.getLogger(__name__)

CONTROL_CHANNEL = "control"


class _Control(BaseModel):
    model_config = ConfigDict(extra="ignore")

    origin: str = ""
    node: str = ""  # the one node it is meant for; empty: every node


class Ban(_Control):
    """A user was banned: forget the cached user, close their sockets."""

    op: Literal["ban"] = "ban"
    guid: str


class Unban(_Control):
    """A ban was lifted: forget the cached user."""

    op: Literal["unban"] = "unban"
    guid: str


class KeyRevoked(_Control):
    """An API key was revoked: forget it in the key cache."""

    op: Literal["key_revoked"] = "key_revoked"
    prefix: str


class Sysop(_Control):
    """Sysop rights of a user changed (``rentahal users sysop``): their sockets follow."""

    op: Literal["sysop"] = "sysop"
    guid: str
    is_sysop: bool = False


class Cancel(_Control):
    """Cancel a running job on the node that runs it."""

    op: Literal["cancel"] = "cancel"
    job_id: str


class Terminate(_Control):
    """Cancel every running job of a user."""

    op: Literal["terminate"] = "terminate"
    guid: str


class SlotFree(_Control):
    """A cluster slot of a worker was released: it may be free again."""

    op: Literal["slot_free"] = "slot_free"
    worker: str


class WorkersChanged(_Control):
    """Workers were added or removed: reload them from the database."""

    op: Literal["workers_changed"] = "workers_changed"


class ModelsChanged(_Control):
    """Hugging Face models changed: reload them from the database."""

    op: Literal["models_changed"] = "models_changed"


class WorkerHealth(BaseModel):
    """The health of one worker as the probing node found it."""

    name: str
    health_score: float
    is_blacklisted: bool


class Health(_Control):
    """Health found by the node that runs the probes."""

    op: Literal["health"] = "health"
    workers: list[WorkerHealth]


class RealmsChanged(_Control):
    """The shared realm configuration has a new version: reload it (``realms/sync.py``)."""

    op: Literal["realms_changed"] = "realms_changed"
    version: int = 0


class ShardsChanged(_Control):
    """A move switched shard prefixes (``rentahal db``): reload the directory now."""

    op: Literal["shards_changed"] = "shards_changed"
    version: int = 0


ControlMessage = Annotated[
    Ban
    | Unban
    | KeyRevoked
    | Sysop
    | Cancel
    | Terminate
    | SlotFree
    | WorkersChanged
    | ModelsChanged
    | Health
    | RealmsChanged
    | ShardsChanged,
    Field(discriminator="op"),
]
_MESSAGE: TypeAdapter[ControlMessage] = TypeAdapter(ControlMessage)
_M = TypeVar("_M", bound=_Control)


class ControlChannel:
    """Publishes control messages and runs the handler registered for each operation."""

    def __init__(self, bus: Bus, node_id: str) -> None:
        self._bus = bus
        self._node_id = node_id
        self._handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}

    def on(self, kind: type[_M], handler: Callable[[_M], Awaitable[None]]) -> None:
        """Run ``handler`` for every message of ``kind`` from another node."""
        self._handlers[kind.model_fields["op"].default] = handler

    def subscribe(self) -> None:
        """Listen on the control channel (before the bus starts)."""
        self._bus.subscribe(CONTROL_CHANNEL, self._receive)

    async def publish(self, message: _Control) -> None:
        """Send ``message`` to every other node."""
        message.origin = self._node_id
        await self._bus.publish(CONTROL_CHANNEL, message.model_dump())

    async def _receive(self, raw: dict[str, Any]) -> None:
        try:
            message: ControlMessage = _MESSAGE.validate_python(raw)
        except ValidationError as exc:
            logger.warning("ignoring a malformed control message: %s", exc.errors()[:1])
            return
        if message.origin == self._node_id or message.node not in ("", self._node_id):
            return
        handler = self._handlers.get(message.op)
        if handler is not None:
            await handler(message)
