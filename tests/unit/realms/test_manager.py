"""RealmWorkerManager selection order: pool, pools elsewhere, own workers, other realms."""

from __future__ import annotations

from rentahal.config import WorkerSettingsSection
from rentahal.models import AIWorker, Query
from rentahal.realms.config import PoolConfig, RealmConfig, RealmsFile
from rentahal.realms.manager import RealmWorkerManager
from rentahal.realms.registry import RealmRegistry
from rentahal.realms.router import FederationRouter
from rentahal.realms.workers import WorkerRegistry


def _setup(*workers: AIWorker, pools: dict[str, PoolConfig] | None = None):
    realms_file = RealmsFile()
    realms_file.realms["$CHAT_B"] = RealmConfig(primary_query_type="chat")
    realms_file.pools.update(pools or {})
    realms = RealmRegistry(realms_file)
    registry = WorkerRegistry(WorkerSettingsSection())
    for w in workers:
        registry.add(w)
    router = FederationRouter(realms, registry)
    return RealmWorkerManager("$CHAT", registry, realms, router), registry, router


def _chat(name: str, **kw: object) -> AIWorker:
    return AIWorker(name=name, address="127.0.0.1:1", type="chat", **kw)  # type: ignore[arg-type]


def test_pool_round_robin_over_members_only() -> None:
    manager, _registry, _ = _setup(
        _chat("a", max_concurrency=10),
        _chat("b", max_concurrency=10),
        _chat("outsider", max_concurrency=10),
        pools={"fast": PoolConfig(query_type="chat", members=["a", "b"], strategy="round_robin")},
    )
    query = Query(prompt="x", query_type="chat", model_name="fast")
    picks = [manager.reserve(query).name for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["a", "b"] * 3


def test_pool_falls_back_to_own_then_other_realm() -> None:
    manager, registry, router = _setup(
        _chat("member"),
        _chat("own"),
        _chat("elsewhere", realm="$CHAT_B"),
        pools={"p": PoolConfig(query_type="chat", members=["member"])},
    )
    query = Query(prompt="x", query_type="chat", model_name="p")
    assert manager.reserve(query).name == "member"  # type: ignore[union-attr]
    assert manager.reserve(query).name == "own"  # type: ignore[union-attr]
    assert manager.reserve(query).name == "elsewhere"  # type: ignore[union-attr]
    assert router.stats.cross_realm_queries == 1
    assert manager.reserve(query) is None
    assert not manager.can_serve_now(query)
    registry.release("own")
    assert manager.can_serve_now(query)


def test_pool_members_in_other_realm_are_found_through_router() -> None:
    manager, _registry, router = _setup(
        _chat("remote", realm="$CHAT_B"),
        pools={"p": PoolConfig(query_type="chat", members=["remote"])},
    )
    worker = manager.reserve(Query(prompt="x", query_type="chat", model_name="p"))
    assert worker is not None and worker.name == "remote"
    assert router.stats.cross_realm_queries == 1


def test_blacklisted_pool_is_ignored() -> None:
    manager, _registry, _router = _setup(
        _chat("member"),
        _chat("own"),
        pools={"p": PoolConfig(query_type="chat", members=["member"], blacklisted=True)},
    )
    assert manager.pool_for(Query(prompt="x", query_type="chat", model_name="p")) is None
