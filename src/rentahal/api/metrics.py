"""``/metrics`` (Prometheus), the realm summary for the dashboard, and federation status."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rentahal.broker import Broker
from rentahal.federation.service import FederationService
from rentahal.realms.scaler import RealmScaler

router = APIRouter()
SUMMARY_EVENTS = 20


def _broker(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every realm's figures."""
    text = await _broker(request).views.metrics_text()
    return Response(text, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/realms/summary")
async def realms_summary(request: Request) -> dict[str, Any]:
    """Per realm: queue depth, load, totals and workers (polled by the dashboard)."""
    scaler: RealmScaler | None = getattr(request.app.state, "scaler", None)
    return {
        "realms": await _broker(request).views.realm_summary(),
        # The scaler's last decisions (what, why, the figures; no addresses).
        "scaler_events": scaler.view()["events"][:SUMMARY_EVENTS] if scaler else [],
        "timestamp": time.time(),
    }


@router.get("/api/federation/status")
async def federation_status(request: Request) -> dict[str, Any]:
    """This instance's part of the federation: realms, workers, connections, totals."""
    status = await _broker(request).views.federation_status()
    federation: FederationService | None = getattr(request.app.state, "federation", None)
    status["federation_metrics"] = federation.metrics.view() if federation else {}
    status["remote_federations"] = federation.peer_views() if federation else []
    return status
