"""Admin API for workers: ``/api/admin/workers`` (list, add or replace, remove)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from rentahal.api.admin import Admin, save_worker
from rentahal.broker import Broker

router = APIRouter(prefix="/api/admin", tags=["admin"])


def _broker(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


@router.get("/workers", dependencies=[Admin])
async def list_workers(request: Request) -> dict[str, Any]:
    """Every worker with health, circuit and load (API keys masked)."""
    return {"workers": _broker(request).views.workers()}


@router.post("/workers", dependencies=[Admin], status_code=201)
async def add_worker(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Add a worker, or replace the one of the same name (the ``add_worker`` message's record)."""
    return await save_worker(request, body)


@router.delete("/workers/{name}", dependencies=[Admin], status_code=204)
async def remove_worker(request: Request, name: str) -> Response:
    """Remove a worker; calls running on it finish."""
    if not await _broker(request).fleet.remove_worker(name):
        raise HTTPException(404, f"No worker named {name}")
    return Response(status_code=204)
