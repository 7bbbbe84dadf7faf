"""``/metrics`` (Prometheus), the realm summary for the dashboard, and federation status."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rentahal.broker import Broker
from rentahal.federation.service import FederationService
from rentahal.realms.config import callback_url
from rentahal.realms.scaler import RealmScaler
from rentahal.status import live_realms, realm_summary

router = APIRouter()
SUMMARY_EVENTS = 20


def _broker(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every realm's figures."""
    broker = _broker(request)
    broker.metrics.sample(await live_realms(broker))
    return Response(broker.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/realms/summary")
async def realms_summary(request: Request) -> dict[str, Any]:
    """Per realm: queue depth, load, totals and workers (polled by the dashboard)."""
    scaler: RealmScaler | None = getattr(request.app.state, "scaler", None)
    return {
        "realms": await realm_summary(_broker(request)),
        # The scaler's last decisions (what, why, the figures; no addresses).
        "scaler_events": scaler.view()["events"][:SUMMARY_EVENTS] if scaler else [],
        "timestamp": time.time(),
    }


@router.get("/api/federation/status")
async def federation_status(request: Request) -> dict[str, Any]:
    """This instance's part of the federation: realms, workers, connections, totals."""
    broker = _broker(request)
    summary = broker.metrics.get_summary_metrics()
    realms = broker.realms
    federation: FederationService | None = getattr(request.app.state, "federation", None)
    return {
        "federation_id": realms.registry.file.federation_id if realms else None,
        "callback_url": (
            callback_url(
                realms.registry.file, broker.settings.server.host, broker.settings.server.port
            )
            if realms
            else None
        ),
        "node_id": broker.node_id,
        "total_realms": len(realms.registry.realms) if realms else 0,
        "federation_metrics": federation.metrics.view() if federation else {},
        "remote_federations": federation.peer_views() if federation else [],
        "realms_enabled": realms is not None,
        "realms": await realm_summary(broker),
        "routing_table": realms.router.routing_table() if realms else {},
        "router": (
            {
                "cross_realm_queries": realms.router.stats.cross_realm_queries,
                "backup_routes": realms.router.stats.backup_routes,
                "failed_routes": realms.router.stats.failed_routes,
            }
            if realms
            else {}
        ),
        "workers": len(broker.registry.workers()),
        "connections": broker.connections.count,
        "peak_connections": broker.connections.peak,
        "processed": summary["total_queries"],
        "errors": summary["total_errors"],
        "error_rate": summary["error_rate"],
    }
