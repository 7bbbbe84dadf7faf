"""``/debug/system_status`` of the original (the unsafe debug routes are gone)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from rentahal.status import system_status

router = APIRouter()


@router.get("/debug/system_status")
async def debug_system_status(request: Request) -> dict[str, Any]:
    """Database, worker, queue and model counts."""
    return await system_status(request.app.state.broker)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness probe for load balancers."""
    return {"status": "ok"}
