"""Read-only views of a broker for status routes, metrics and the dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rentahal.realms.metrics import RealmLive

if TYPE_CHECKING:
    from rentahal.broker import Broker

LEGACY_TYPES = ["chat", "vision", "imagine", "speech"]


async def system_status(broker: Broker) -> dict[str, Any]:
    """The original's ``/debug/system_status`` (``database_exists``: the database answers)."""
    return {
        "database_exists": await broker.storage.reachable(),
        "total_workers": len(broker.registry.workers()),
        "queue_depth": await broker.queue_depth(),
        "huggingface_models": len(broker.fleet.hf_models),
    }


async def live_realms(broker: Broker) -> list[RealmLive]:
    """Queue depth, load, connections and worker health per queue (realms and legacy)."""
    conns = broker.connections.realm_counts()
    realms = broker.realms
    rows = []
    for name, processor in list(broker.processors.items()):
        if realms is not None and name in realms.managers:
            states = realms.managers[name].states()
        elif realms is None:
            states = broker.registry.states()
        else:
            states = []
        rows.append(
            RealmLive(
                realm=name,
                queue_depth=await broker.bus.depth(name),
                in_flight=processor.in_flight,
                connections=conns.get(name, 0),
                workers=[(s.worker.name, s.worker.health_score) for s in states],
            )
        )
    return rows


def _worker_rows(broker: Broker, live: RealmLive) -> list[dict[str, Any]]:
    rows = []
    for name, health in live.workers:
        state = broker.registry.get(name)
        rows.append(
            {
                "name": name,
                "health_score": health,
                "in_flight": state.in_flight if state else 0,
                "max_concurrency": state.worker.max_concurrency if state else 0,
            }
        )
    return rows


async def realm_summary(broker: Broker) -> list[dict[str, Any]]:
    """Per realm: types, queue, load, totals and workers (for the dashboard)."""
    realms = broker.realms
    out = []
    for live in await live_realms(broker):
        totals = broker.metrics.totals(live.realm)
        realm = realms.registry.realms.get(live.realm) if realms else None
        if realm is not None:
            types = [realm.config.primary_query_type]
        else:
            types = LEGACY_TYPES
        out.append(
            {
                "name": live.realm,
                "query_types": types,
                "queue_depth": live.queue_depth,
                "in_flight": live.in_flight,
                "connections": live.connections,
                "processed": int(totals["processed"]),
                "errors": int(totals["errors"]),
                "stopped": bool(realm and realm.stopped),
                "workers": _worker_rows(broker, live),
            }
        )
    return out
