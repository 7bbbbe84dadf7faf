"""``/api/admin/scaler``: the RealmScaler's events, figures and provisioned workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from rentahal.api.admin import Admin
from rentahal.realms.scaler import RealmScaler

router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.get("/scaler", dependencies=[Admin])
async def scaler_view(request: Request) -> dict[str, Any]:
    """What the scaler decided and why, with the figures behind each decision."""
    scaler: RealmScaler = request.app.state.scaler
    return scaler.view()
