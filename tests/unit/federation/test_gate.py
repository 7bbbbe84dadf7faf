"""The routing gate: which workers of other installations a job may use."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from rentahal.broker.core import BrokerParts
from rentahal.bus.memory import MemoryBus
from rentahal.bus.state import MemoryState
from rentahal.config import load_settings
from rentahal.federation.context import ROUTING_JOB
from rentahal.federation.identity import Identity
from rentahal.federation.peers import Peer, PeerStore
from rentahal.federation.service import FederationService
from rentahal.models import AIWorker, Job, Query
from rentahal.realms.config import DiscoveryConfig, FederationConfig
from rentahal.realms.metrics import RealmMetricsCollector
from rentahal.realms.router import RouterStats
from rentahal.realms.workers import WorkerRegistry
from rentahal.storage.database import Storage


def _service(tmp_path: Path, **config: object) -> tuple[FederationService, WorkerRegistry]:
    settings = load_settings(None, environ={})
    registry = WorkerRegistry(settings.workers)
    # The service reads only these parts of the broker here.
    parts = BrokerParts(
        registry,
        None,  # type: ignore[arg-type]
        RealmMetricsCollector(RouterStats),
        MemoryState(),
        MemoryBus(),
    )
    broker = SimpleNamespace(parts=lambda: parts, realms=None)
    identity = Identity.load_or_create(tmp_path / "k.pem", "home", "http://127.0.0.1:1")
    store = PeerStore(Storage(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"))
    service = FederationService(
        identity,
        FederationConfig.model_validate(config),
        DiscoveryConfig(),
        store,
        broker,  # type: ignore[arg-type]
    )
    registry.remote_gate = service.gate
    return service, registry


def _peer(service: FederationService, tmp_path: Path, peer_id: str, wait_s: float) -> None:
    other = Identity.load_or_create(tmp_path / f"{peer_id}.pem", peer_id, "http://x")
    peer = Peer(peer_id, f"http://{peer_id}:5000", other.public_key)
    peer.services = {
        "chat": {
            "realm": "$CHAT",
            "workers": 1,
            "free_capacity": 2,
            "queue_depth": 0,
            "est_wait_s": wait_s,
            "models": [],
        }
    }
    service.peers[peer_id] = peer
    service._apply_services(peer)


def _names(registry: WorkerRegistry) -> set[str]:
    return {s.worker.name for s in registry.candidates("chat")}


def _job(**query: object) -> Job:
    return Job(user_guid="u", query=Query(query_type="chat", prompt="p", **query))  # type: ignore[arg-type]


def test_local_first_then_peers_by_advertised_wait(tmp_path: Path) -> None:
    service, registry = _service(tmp_path)
    _peer(service, tmp_path, "near", 0.2)
    _peer(service, tmp_path, "far", 30.0)
    # Nothing local: the peer with the shortest advertised wait.
    assert _names(registry) == {"fed.near.chat"}
    registry.add(AIWorker(name="home-chat", address="127.0.0.1:9", type="chat"))
    assert _names(registry) == {"home-chat"}
    # A job that has waited past route_when_wait_s may also go out.
    old = _job()
    old.submitted_at -= 60
    token = ROUTING_JOB.set(old)
    try:
        assert _names(registry) == {"home-chat", "fed.near.chat"}
    finally:
        ROUTING_JOB.reset(token)


def test_visited_installations_and_hop_limit_are_never_used(tmp_path: Path) -> None:
    service, registry = _service(tmp_path, max_hops=2)
    _peer(service, tmp_path, "near", 0.2)
    for query, expected in (
        ({"federation_visited": ["near"], "federation_hops": 1}, set()),
        ({"federation_visited": ["x"], "federation_hops": 2}, set()),
        ({"federation_visited": ["x"], "federation_hops": 1}, {"fed.near.chat"}),
    ):
        token = ROUTING_JOB.set(_job(**query))
        try:
            assert _names(registry) == expected, query
        finally:
            ROUTING_JOB.reset(token)


@pytest.mark.parametrize("state", ["down", "blocked", "pending"])
def test_peers_that_are_not_active_are_not_used(tmp_path: Path, state: str) -> None:
    service, registry = _service(tmp_path)
    _peer(service, tmp_path, "near", 0.2)
    service.peers["near"].state = state  # type: ignore[assignment]
    assert _names(registry) == set()


def test_a_pinned_type_goes_to_its_peer(tmp_path: Path) -> None:
    service, registry = _service(tmp_path, pins={"chat": "far"})
    _peer(service, tmp_path, "near", 0.2)
    _peer(service, tmp_path, "far", 30.0)
    registry.add(AIWorker(name="home-chat", address="127.0.0.1:9", type="chat"))
    assert _names(registry) == {"fed.far.chat"}
