"""RealmRegistry rules, user affinity, and routing with backup and legacy fallback."""

from __future__ import annotations

import pytest

from rentahal.config import WorkerSettingsSection
from rentahal.models import AIWorker, Query
from rentahal.realms.config import RealmConfig, RealmsFile
from rentahal.realms.registry import RealmRegistry
from rentahal.realms.router import FederationRouter
from rentahal.realms.workers import WorkerRegistry


def _workers(*workers: AIWorker) -> WorkerRegistry:
    registry = WorkerRegistry(WorkerSettingsSection())
    for w in workers:
        registry.add(w)
    return registry


def _chat(name: str, **kw: object) -> AIWorker:
    return AIWorker(name=name, address="127.0.0.1:1", type="chat", **kw)  # type: ignore[arg-type]


async def _zero(_realm: str) -> int:
    return 0


def test_defaults_have_four_realms() -> None:
    registry = RealmRegistry(RealmsFile())
    assert list(registry.realms) == ["$CHAT", "$VISION", "$IMAGINE", "$SPEECH"]
    assert registry.routing_table()["chat"] == ["$CHAT"]


def test_primary_realm_cannot_be_deleted_but_others_can() -> None:
    registry = RealmRegistry(RealmsFile())
    with pytest.raises(ValueError, match="primary realm"):
        registry.delete("$CHAT")
    registry.create("$CHAT2", RealmConfig(primary_query_type="chat"))
    assert not registry.is_primary("$CHAT2")
    registry.delete("$CHAT2")
    assert "$CHAT2" not in registry.realms
    with pytest.raises(ValueError, match="already exists"):
        registry.create("$CHAT", RealmConfig(primary_query_type="chat"))


def test_user_affinity_is_stable_and_moves_few_users_on_growth() -> None:
    registry = RealmRegistry(RealmsFile())
    guids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(2000)]
    before = {g: registry.assign_user(g) for g in guids}
    assert before == {g: registry.assign_user(g) for g in guids}
    registry.create("$EXTRA", RealmConfig(primary_query_type="chat"))
    after = {g: registry.assign_user(g) for g in guids}
    moved = [g for g in guids if before[g] != after[g]]
    assert all(after[g] == "$EXTRA" for g in moved)  # only moves onto the new realm
    assert 0.1 < len(moved) / len(guids) < 0.3  # about 1/5 with five realms


async def test_route_to_primary_then_backup_then_legacy() -> None:
    realms_file = RealmsFile()
    realms_file.realms["$CHAT_B"] = RealmConfig(primary_query_type="chat")
    realms_file.realms["$CHAT"].backup_realms = ["$CHAT_B"]
    realms = RealmRegistry(realms_file)
    workers = _workers(_chat("main"), _chat("spare", realm="$CHAT_B"))
    router = FederationRouter(realms, workers)
    query = Query(prompt="hi", query_type="chat")
    assert await router.route_query(query, _zero) == "$CHAT"
    realms.get("$CHAT").stopped = True
    assert await router.route_query(query, _zero) == "$CHAT_B"
    assert router.stats.backup_routes == 1
    realms.get("$CHAT_B").stopped = True
    assert await router.route_query(query, _zero) is None  # the legacy path takes it
    assert router.stats.failed_routes == 1


async def test_backup_takes_over_when_primary_queue_is_over_threshold() -> None:
    realms_file = RealmsFile()
    realms_file.realms["$CHAT_B"] = RealmConfig(primary_query_type="chat")
    realms_file.realms["$CHAT"].backup_realms = ["$CHAT_B"]
    realms_file.realms["$CHAT"].queue_threshold = 3
    realms = RealmRegistry(realms_file)
    router = FederationRouter(realms, _workers(_chat("main"), _chat("spare", realm="$CHAT_B")))

    async def depth(realm: str) -> int:
        return 5 if realm == "$CHAT" else 0

    assert await router.route_query(Query(prompt="x", query_type="chat"), depth) == "$CHAT_B"


async def test_a_realm_without_backups_is_routed_to_without_asking_its_depth() -> None:
    realms_file = RealmsFile()
    realms_file.realms["$CHAT"].queue_threshold = 3
    realms = RealmRegistry(realms_file)
    router = FederationRouter(realms, _workers(_chat("main")))
    asked: list[str] = []

    async def depth(realm: str) -> int:
        asked.append(realm)
        return 5  # over the threshold, but there is nowhere else to go

    assert await router.route_query(Query(prompt="x", query_type="chat"), depth) == "$CHAT"
    assert asked == []  # no round trip to the queue for a decision without a choice
    assert router.stats.routed == 1
    assert router.stats.backup_routes == 0
