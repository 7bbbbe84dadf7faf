"""Admin API for sysops: realms, pools and realm workers (``/api/admin/...``)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import ValidationError

from rentahal.broker import Broker
from rentahal.errors import PoolNotFound, QueryRejected, RealmNotFound, StaleVersion, StorageError
from rentahal.models import AIWorker, is_valid_guid
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


def _realm_view(
    service: RealmService, name: str, provisioned: set[str] | None = None
) -> dict[str, Any]:
    realm = service.registry.get(name)
    manager = service.managers.get(name)
    workers = [s.worker.public() for s in manager.states()] if manager else []
    for worker in workers:
        # Started by the scaler (which may also stop it again).
        worker["provisioned"] = worker["name"] in (provisioned or set())
    return {
        "name": name,
        **realm.config.model_dump(),
        "stopped": realm.stopped,
        "is_primary": service.registry.is_primary(name),
        "workers": workers,
    }


def _provisioned(request: Request) -> set[str]:
    scaler = getattr(request.app.state, "scaler", None)
    return set(scaler.provisioned) if scaler is not None else set()


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _expected_version(request: Request, body: dict[str, Any] | None = None) -> int | None:
    """The configuration version a write is based on: ``If-Match``, else ``body["version"]``.

    ``None`` (neither given, or ``If-Match: *``): the write applies to the newest version.
    """
    header = request.headers.get("if-match")
    if header is not None and header.strip() != "*":
        raw = header.strip().removeprefix("W/").strip('"')
        if not raw.isdigit():
            raise HTTPException(422, "If-Match: a realm configuration version (the ETag)")
        return int(raw)
    value = (body or {}).get("version")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HTTPException(422, "version: a realm configuration version number")
    return value


@contextmanager
def _errors(realm_missing: int = 404) -> Iterator[None]:
    """Translate the service's refusals into HTTP answers."""
    try:
        yield
    except ValidationError as exc:  # before ValueError, its base
        raise HTTPException(422, _first_error(exc)) from None
    except StaleVersion as exc:
        raise HTTPException(409, str(exc), headers=_etag(exc.current)) from None
    except RealmNotFound as exc:
        detail = str(exc) if realm_missing == 404 else f"realm: {exc}"
        raise HTTPException(realm_missing, detail) from None
    except PoolNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    except StorageError as exc:
        raise HTTPException(503, f"The realm configuration could not be saved: {exc}") from None


Admin = Depends(require_sysop)


@router.get("/realms", dependencies=[Admin])
async def list_realms(request: Request, response: Response) -> dict[str, Any]:
    """Every realm with its configuration, state and workers; ``version`` is also the ETag."""
    service = _realms(request)
    response.headers.update(_etag(service.version))
    return {
        "version": service.version,
        "realms": [_realm_view(service, n, _provisioned(request)) for n in service.registry.realms],
        "routing_table": service.router.routing_table(),
    }


@router.post("/realms", dependencies=[Admin], status_code=201)
async def create_realm(
    request: Request, response: Response, body: dict[str, Any]
) -> dict[str, Any]:
    """Create a realm (``{"name": "$X", "primary_query_type": ..., ...}``)."""
    service = _realms(request)
    name = body.get("name")
    if not isinstance(name, str) or not name.startswith("$") or not _NAME_OK.fullmatch(name):
        raise HTTPException(
            422, "name: a realm name is '$' then letters, digits, '_', '-' or '.' (max 64)"
        )
    with _errors():
        await service.create_realm(name, body, _expected_version(request, body))
    response.headers.update(_etag(service.version))
    return _realm_view(service, name)


@router.put("/realms/{name}", dependencies=[Admin])
async def update_realm(
    request: Request, response: Response, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Change a realm's configuration; ``"stopped": true|false`` stops or resumes it."""
    service = _realms(request)
    with _errors():
        await service.update_realm(name, body, _expected_version(request, body))
        view = _realm_view(service, name)
    response.headers.update(_etag(service.version))
    return view


@router.delete("/realms/{name}", dependencies=[Admin], status_code=204)
async def delete_realm(request: Request, name: str) -> Response:
    """Delete a realm that is not a primary realm; its waiting queries are re-routed."""
    service = _realms(request)
    with _errors():
        await service.delete_realm(name, _expected_version(request))
    return Response(status_code=204, headers=_etag(service.version))


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
    except RealmNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return await save_worker(request, {**body, "realm": name})


async def save_worker(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a worker record and add (or replace) it; 422 says what is wrong with it."""
    try:
        worker = AIWorker.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(422, _first_error(exc)) from None
    try:
        await _broker(request).fleet.add_worker(worker)
    except QueryRejected as exc:
        raise HTTPException(422, str(exc)) from None
    return worker.public()


@router.delete("/realms/{name}/workers/{worker}", dependencies=[Admin], status_code=204)
async def remove_realm_worker(request: Request, name: str, worker: str) -> Response:
    """Remove a worker of a realm."""
    service = _realms(request)
    record = _broker(request).views.worker(worker)
    if record is None or service.registry.realm_of_worker(record) != name:
        raise HTTPException(404, f"No worker {worker} in realm {name}")
    await _broker(request).fleet.remove_worker(worker)
    return Response(status_code=204)


@router.get("/pools", dependencies=[Admin])
async def list_pools(request: Request, response: Response) -> dict[str, Any]:
    """Every pool alias; ``version`` is the realm configuration's (also the ETag)."""
    service = _realms(request)
    response.headers.update(_etag(service.version))
    return {
        "version": service.version,
        "pools": [{"name": n, **p.model_dump()} for n, p in service.registry.pools.items()],
    }


@router.post("/pools", dependencies=[Admin], status_code=201)
async def create_pool(request: Request, response: Response, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pool alias (``{"name", "query_type", "members", "strategy", "blacklisted"}``)."""
    name = body.get("name")
    if not isinstance(name, str) or not _NAME_OK.fullmatch(name):
        raise HTTPException(
            422, "name: a pool name is letters, digits, '$', '_', '-' or '.' (max 64)"
        )
    return await _save_pool(request, response, name, body, create=True)


@router.put("/pools/{name}", dependencies=[Admin])
async def update_pool(
    request: Request, response: Response, name: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Change a pool alias."""
    return await _save_pool(request, response, name, body, create=False)


async def _save_pool(
    request: Request, response: Response, name: str, body: dict[str, Any], *, create: bool
) -> dict[str, Any]:
    service = _realms(request)
    with _errors(realm_missing=422):
        pool = await service.set_pool(
            name, body, create=create, version=_expected_version(request, body)
        )
    response.headers.update(_etag(service.version))
    return {"name": name, **pool.model_dump()}


@router.delete("/pools/{name}", dependencies=[Admin], status_code=204)
async def delete_pool(request: Request, name: str) -> Response:
    """Remove a pool alias."""
    service = _realms(request)
    with _errors():
        await service.delete_pool(name, _expected_version(request))
    return Response(status_code=204, headers=_etag(service.version))
