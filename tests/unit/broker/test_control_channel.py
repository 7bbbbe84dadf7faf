"""Control messages between nodes: typed, one handler per operation, own messages ignored."""

from __future__ import annotations

from rentahal.broker.control import CONTROL_CHANNEL, Ban, Cancel, ControlChannel, Health
from rentahal.bus.memory import MemoryBus
from rentahal.config import Settings, WorkerSettingsSection
from rentahal.models import AIWorker
from rentahal.realms.execution import QueryExecutor
from rentahal.realms.processor import QueryProcessor
from rentahal.realms.workers import WorkerRegistry


async def test_each_node_runs_the_handler_of_others_messages_only() -> None:
    bus = MemoryBus()
    a, b = ControlChannel(bus, "a"), ControlChannel(bus, "b")
    heard: list[tuple[str, str]] = []

    async def on_ban_a(message: Ban) -> None:
        heard.append(("a", message.guid))

    async def on_ban_b(message: Ban) -> None:
        heard.append(("b", message.guid))

    a.on(Ban, on_ban_a)
    b.on(Ban, on_ban_b)
    a.subscribe()
    b.subscribe()
    await a.publish(Ban(guid="g1"))
    assert heard == [("b", "g1")]  # a applied its own change before publishing


async def test_addressed_malformed_and_unhandled_messages() -> None:
    bus = MemoryBus()
    a, b, c = ControlChannel(bus, "a"), ControlChannel(bus, "b"), ControlChannel(bus, "c")
    cancels: list[str] = []
    health: list[Health] = []

    async def on_cancel(message: Cancel) -> None:
        cancels.append(message.job_id)

    async def on_health(message: Health) -> None:
        health.append(message)

    b.on(Cancel, on_cancel)
    c.on(Cancel, on_cancel)
    c.on(Health, on_health)
    for channel in (a, b, c):
        channel.subscribe()
    await a.publish(Cancel(job_id="j1", node="c"))
    assert cancels == ["j1"]  # only the node that runs the job
    await bus.publish(CONTROL_CHANNEL, {"op": "health", "workers": [{"name": 1}]})
    await bus.publish(CONTROL_CHANNEL, {"op": "no_such_op"})
    await bus.publish(CONTROL_CHANNEL, {"guid": "no op at all"})
    assert health == []  # malformed messages are dropped, the channel lives on
    await a.publish(Ban(guid="nobody handles this"))
    await a.publish(Cancel(job_id="j2", node="b"))
    assert cancels == ["j1", "j2"]


async def test_processor_listens_to_the_registry_only_while_running() -> None:
    registry = WorkerRegistry(WorkerSettingsSection())
    registry.add(AIWorker(name="w", address="127.0.0.1:1", type="chat"))
    executor = QueryExecutor(registry, None, Settings())  # type: ignore[arg-type]

    async def finish(*_: object) -> None:
        return None

    for _ in range(5):  # a realm stopped and resumed again and again
        processor = QueryProcessor("$CHAT", MemoryBus(), registry, executor, finish)
        processor.start()
        processor.start()
        assert len(registry._listeners) == 1
        await processor.stop(0.1)
        assert registry._listeners == []
    processor = QueryProcessor("$CHAT", MemoryBus(), registry, executor, finish)
    for _ in range(5):  # the same consumer stopped and started again
        processor.start()
        assert len(registry._listeners) == 1
        await processor.stop(0.1)
    assert registry._listeners == []
