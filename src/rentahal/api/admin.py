"""Admin API for sysops: realms, pools and realm workers (``/api/admin/...``)."""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import ValidationError

from rentahal.broker import Broker
from rentahal.errors import RealmNotFound
from rentahal.models import AIWorker, is_valid_guid
from rentahal.realms.config import PoolConfig, RealmConfig
from rentahal.realms.service import RealmService

router = APIRouter(prefix="/api/admin", tags=["admin"])
# Names travel in URL paths: no '/', no spaces, no markup.
_NAME_OK = re.compile(r"[$A-Za-z0-9_.\-]{1,64}")


def _broker(request: Request) -> Broker:
    return request.app.state.broker  # type: ignore[no-any-return]


async def require_sysop(request: Request) -> None:
    """Admin token (``X-Admin-Token`` or ``Authorization: Bearer``) or a sysop's cookie."""
    broker = _broker(request)
    token = broker.settings.security.admin_token
    offered = request.headers.get("x-admin-token") or ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        offered = offered or auth[7:].strip()
    if token and offered and hmac.compare_digest(offered, token):
        return
    guid = request.cookies.get("user_guid")
    if not is_valid_guid(guid):
        raise HTTPException(401, "Sign in as a sysop (user_guid cookie) or send the admin token")
    assert guid is not None
    user = await broker.get_user(guid)
    if user is None:
        raise HTTPException(401, "Unknown user")
    if not user.is_sysop or user.is_banned:
        raise HTTPException(403, "Sysop rights are needed for this")


def _realms(request: Request) -> RealmService:
    realms = _broker(request).realms
    if realms is None:
        raise HTTPException(409, "Realms are disabled on this broker (legacy mode)")
    return realms


def _realm_view(service: RealmService, name: str) -> dict[str, Any]:
    realm = service.registry.get(name)
    manager = service.managers.get(name)
    return {
        "name": name,
        **realm.config.model_dump(),
        "stopped": realm.stopped,
        "is_primary": service.registry.is_primary(name),
        "workers": [s.worker.public() for s in manager.states()] if manager else [],
    }


def _parse(model: type[RealmConfig] | type[PoolConfig], body: dict[str, Any]) -> Any:
    fields = {k: v for k, v in body.items() if k not in ("name", "stopped")}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise HTTPException(422, f"{where}: {first['msg']}") from None


Admin = Depends(require_sysop)


@router.get("/realms", dependencies=[Admin])
async def list_realms(request: Request) -> dict[str, Any]:
    """Every realm with its configuration, state and workers."""
    service = _realms(request)
    return {
        "realms": [_realm_view(service, n) for n in service.registry.realms],
        "routing_table": service.router.routing_table(),
    }


@router.post("/realms", dependencies=[Admin], status_code=201)
async def create_realm(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Create a realm (``{"name": "$X", "primary_query_type": ..., ...}``)."""
    service = _realms(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.startswith("$") or not _NAME_OK.fullmatch(name):
        raise HTTPException(
            422, "name: a realm name is '$' then letters, digits, '_', '-' or '.' (max 64)"
        )
    try:
        service.create_realm(name, _parse(RealmConfig, body))
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return _realm_view(service, name)


@router.put("/realms/{name}", dependencies=[Admin])
async def update_realm(request: Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Replace a realm's configuration; ``"stopped": true|false`` stops or resumes it."""
    broker = _broker(request)
    service = _realms(request)
    try:
        current = service.registry.get(name).config.model_dump()
        service.update_realm(name, _parse(RealmConfig, {**current, **body}))
        if body.get("stopped") is True and not service.registry.get(name).stopped:
            await broker.reroute(await service.stop_realm(name))
        elif body.get("stopped") is False and service.registry.get(name).stopped:
            service.start_realm(name)
    except RealmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    return _realm_view(service, name)


@router.delete("/realms/{name}", dependencies=[Admin], status_code=204)
async def delete_realm(request: Request, name: str) -> Response:
    """Delete a realm that is not a primary realm; its waiting queries are re-routed."""
    service = _realms(request)
    try:
        waiting = await service.delete_realm(name)
    except RealmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    await _broker(request).reroute(waiting)
    return Response(status_code=204)


@router.get("/realms/{name}/workers", dependencies=[Admin])
async def realm_workers(request: Request, name: str) -> list[dict[str, Any]]:
    """The workers of one realm."""
    service = _realms(request)
    try:
        return _realm_view(service, name)["workers"]  # type: ignore[no-any-return]
    except RealmNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/realms/{name}/workers", dependencies=[Admin], status_code=201)
async def add_realm_worker(request: Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Add (or move) a worker into a realm."""
    service = _realms(request)
    try:
        service.registry.get(name)
        worker = AIWorker.model_validate({**body, "realm": name})
    except RealmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HTTPException(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    await _broker(request).fleet.add_worker(worker)
    return worker.public()


@router.delete("/realms/{name}/workers/{worker}", dependencies=[Admin], status_code=204)
async def remove_realm_worker(request: Request, name: str, worker: str) -> Response:
    """Remove a worker of a realm."""
    service = _realms(request)
    state = _broker(request).registry.get(worker)
    if state is None or service.registry.realm_of_worker(state.worker) != name:
        raise HTTPException(404, f"No worker {worker} in realm {name}")
    await _broker(request).fleet.remove_worker(worker)
    return Response(status_code=204)


@router.get("/pools", dependencies=[Admin])
async def list_pools(request: Request) -> dict[str, Any]:
    """Every pool alias."""
    service = _realms(request)
    return {"pools": [{"name": n, **p.model_dump()} for n, p in service.registry.pools.items()]}


@router.post("/pools", dependencies=[Admin], status_code=201)
async def create_pool(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pool alias (``{"name", "query_type", "members", "strategy", "blacklisted"}``)."""
    service = _realms(request)
    name = body.get("name")
    if not isinstance(name, str) or not _NAME_OK.fullmatch(name):
        raise HTTPException(
            422, "name: a pool name is letters, digits, '$', '_', '-' or '.' (max 64)"
        )
    if name in service.registry.pools:
        raise HTTPException(409, f"Pool {name} already exists")
    return _save_pool(service, name, _parse(PoolConfig, body))


@router.put("/pools/{name}", dependencies=[Admin])
async def update_pool(request: Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Replace a pool alias."""
    service = _realms(request)
    if name not in service.registry.pools:
        raise HTTPException(404, f"No pool named {name}")
    current = service.registry.pools[name].model_dump()
    return _save_pool(service, name, _parse(PoolConfig, {**current, **body}))


def _save_pool(service: RealmService, name: str, pool: PoolConfig) -> dict[str, Any]:
    try:
        service.set_pool(name, pool)
    except RealmNotFound as exc:
        raise HTTPException(422, f"realm: {exc}") from None
    return {"name": name, **pool.model_dump()}


@router.delete("/pools/{name}", dependencies=[Admin], status_code=204)
async def delete_pool(request: Request, name: str) -> Response:
    """Remove a pool alias."""
    if not _realms(request).delete_pool(name):
        raise HTTPException(404, f"No pool named {name}")
    return Response(status_code=204)
