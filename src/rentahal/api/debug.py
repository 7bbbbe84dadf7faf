"""``/debug/system_status`` of the original (the unsafe debug routes are gone)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from rentahal.broker import Broker

router = APIRouter()


@router.get("/debug/system_status")
async def debug_system_status(request: Request) -> dict[str, Any]:
    """Database, worker, queue and model counts."""
    broker: Broker = request.app.state.broker
    return await broker.views.system_status()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness probe for load balancers."""
    return {"status": "ok"}
