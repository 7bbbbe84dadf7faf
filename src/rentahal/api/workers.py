"""Self-registration of workers: ``/api/workers/register``, ``heartbeat``, ``unregister``.

Authenticated by a worker token (``Authorization: Bearer rwt_...``) that a sysop
issued with ``rentahal workers token create``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rentahal.errors import QueryRejected
from rentahal.models import AIWorker, WorkerType
from rentahal.realms.registration import RegistrationRefused, Registrations

router = APIRouter(prefix="/api/workers", tags=["workers"])


class _Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: WorkerType
    # host:port, or only the port: the host is then the address the call came from.
    address: str | None = Field(default=None, max_length=300)
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: str = ""
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    models: list[str] = Field(default_factory=list, max_length=100)


class _Name(BaseModel):
    name: str = Field(min_length=1, max_length=100)


def _registrations(request: Request) -> Registrations:
    return request.app.state.registrations  # type: ignore[no-any-return]


def _token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if not auth.lower().startswith("bearer ") or not auth[7:].strip():
        raise HTTPException(401, "A worker token is needed (Authorization: Bearer rwt_...)")
    return auth[7:].strip()


def _refused(exc: QueryRejected) -> HTTPException:
    return HTTPException(exc.status if isinstance(exc, RegistrationRefused) else 403, str(exc))


@router.post("/register", status_code=201)
async def register(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Register the calling worker; it must heartbeat every ``heartbeat_s``."""
    token = _token(request)
    try:
        data = _Registration.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HTTPException(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if data.address is None:
        if data.port is None or request.client is None:
            raise HTTPException(422, "address: give host:port, or port")
        host = request.client.host
        data.address = f"[{host}]:{data.port}" if ":" in host else f"{host}:{data.port}"
    try:
        worker = AIWorker(
            name=data.name,
            address=data.address,
            type=data.type,
            protocol=data.protocol,
            max_concurrency=data.max_concurrency,
            models=data.models,
        )
        registrations = _registrations(request)
        registered = await registrations.register(token, worker)
    except ValidationError as exc:
        raise HTTPException(422, str(exc.errors()[0]["msg"])) from None
    except QueryRejected as exc:
        raise _refused(exc) from None
    return {
        "worker": registered.public(),
        "heartbeat_s": registrations.heartbeat_s,
        "lease_s": registrations.lease_s,
    }


@router.post("/heartbeat")
async def heartbeat(request: Request, body: _Name) -> dict[str, Any]:
    """Renew the worker's lease."""
    try:
        registrations = _registrations(request)
        await registrations.heartbeat(_token(request), body.name)
    except QueryRejected as exc:
        raise _refused(exc) from None
    return {"status": "ok", "lease_s": registrations.lease_s}


@router.post("/unregister")
async def unregister(request: Request, body: _Name) -> dict[str, Any]:
    """Remove the worker (it is stopping)."""
    try:
        await _registrations(request).unregister(_token(request), body.name)
    except QueryRejected as exc:
        raise _refused(exc) from None
    return {"status": "removed"}
