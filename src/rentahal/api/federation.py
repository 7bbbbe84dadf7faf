"""Federation routes: identity, join, advertise, discover, route, result; sysop actions.

Every route but ``identity`` and ``join`` needs a request signed by an admitted
peer (RFC 9421, see ``rentahal.federation.signing``); their answers are signed
by this installation. ``join`` is signed by the key it offers.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from rentahal.api.admin import Admin
from rentahal.federation.client import PeerCallFailed
from rentahal.federation.service import AdmissionRefused, FederationService, JoinRefused
from rentahal.federation.signing import SignatureError, sign_response

router = APIRouter(tags=["federation"])

MAX_BODY_BYTES = 48 * 1024 * 1024  # a vision query's image fits


def _service(request: Request) -> FederationService:
    service: FederationService | None = getattr(request.app.state, "federation", None)
    if service is None:
        raise HTTPException(404, "Federation is not enabled on this installation")
    return service


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(413, "Request body too large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, "Request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def _signed(service: FederationService, status: int, payload: dict[str, Any]) -> Response:
    body = orjson.dumps(payload)
    headers = sign_response(service.identity, status, body)
    headers.pop("content-type", None)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _verified(request: Request) -> tuple[FederationService, str, bytes]:
    """The service, the calling peer's federation id, and the body; 401 when unsigned."""
    service = _service(request)
    body = await _body(request)
    try:
        peer_id = service.verifier.verify_request(
            request.method, str(request.url), dict(request.headers), body
        )
    except SignatureError as exc:
        raise HTTPException(401, f"Federation signature refused: {exc}") from None
    return service, peer_id, body


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        raise HTTPException(400, "The body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(422, "The body must be a JSON object")
    return data


@router.get("/api/federation/identity")
async def identity(request: Request) -> dict[str, Any]:
    """This installation's federation id, public key, callback URL and realm types."""
    return _service(request).identity_document()


@router.post("/api/federation/join")
async def join(request: Request) -> Response:
    """Admit another installation (token, sysop approval or open, per ``federation.trust``)."""
    service = _service(request)
    body = await _body(request)
    try:
        answer = await service.admit(request.method, str(request.url), dict(request.headers), body)
    except AdmissionRefused as exc:
        return _signed(service, exc.status, {"status": "refused", "detail": str(exc)})
    return _signed(service, 202 if answer["status"] == "pending" else 200, answer)


@router.post("/api/federation/advertise")
async def advertise(request: Request) -> Response:
    """A peer's services (per query type: workers, free capacity, queue depth, wait, models)."""
    service, peer_id, body = await _verified(request)
    try:
        service.accept_advertisement(peer_id, _json(body))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return _signed(service, 200, {"status": "ok", "federation_id": service.identity.federation_id})


@router.get("/api/federation/discover")
async def discover(request: Request) -> Response:
    """The peers this installation knows and their services."""
    service, _peer_id, _body_bytes = await _verified(request)
    return _signed(service, 200, service.discover_document())


@router.post("/api/federation/route")
async def route(request: Request) -> Response:
    """Queue a peer's query here (at most once per its job id)."""
    service, peer_id, body = await _verified(request)
    status, answer = await service.incoming.submit(peer_id, _json(body))
    return _signed(service, status, answer)


@router.get("/api/federation/result/{job_id}")
async def result(request: Request, job_id: str, wait_s: float = 0.0) -> Response:
    """The answer of a peer's query; waits (bounded) while it runs."""
    service, peer_id, _body_bytes = await _verified(request)
    status, answer = await service.incoming.result(peer_id, job_id, wait_s)
    return _signed(service, status, answer)


@router.get("/api/admin/federation", dependencies=[Admin])
async def peers(request: Request) -> dict[str, Any]:
    """Peers with state, last seen, round trip, services and queries each way."""
    service = _service(request)
    return {
        "federation_id": service.identity.federation_id,
        "callback_url": service.identity.callback_url,
        "trust": service.config.trust,
        "peers": service.peer_views(),
        "federation_metrics": service.metrics.view(),
    }


@router.post("/api/admin/federation/join", dependencies=[Admin])
async def join_peer(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Ask the installation at ``{"url": ...}`` to admit this one."""
    service = _service(request)
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise HTTPException(422, "url: an http(s) URL of another installation")
    try:
        peer = await service.join(url)
    except JoinRefused as exc:
        raise HTTPException(403, f"The other installation refused: {exc}") from None
    except PeerCallFailed as exc:
        raise HTTPException(502, f"Could not join: {exc}") from None
    if peer is None:
        return {"status": "pending"}
    return {"status": "accepted", "peer": peer.view()}


async def _set(request: Request, federation_id: str, state: str) -> dict[str, Any]:
    peer = await _service(request).set_state(federation_id, state)
    if peer is None:
        raise HTTPException(404, f"No peer {federation_id}")
    return peer.view()


@router.post("/api/admin/federation/peers/{federation_id}/approve", dependencies=[Admin])
async def approve(request: Request, federation_id: str) -> dict[str, Any]:
    """Approve a pending peer (or unblock one)."""
    return await _set(request, federation_id, "active")


@router.post("/api/admin/federation/peers/{federation_id}/block", dependencies=[Admin])
async def block(request: Request, federation_id: str) -> dict[str, Any]:
    """Block a peer: its calls are refused and it is never routed to."""
    return await _set(request, federation_id, "blocked")


@router.delete("/api/admin/federation/peers/{federation_id}", dependencies=[Admin], status_code=204)
async def remove(request: Request, federation_id: str) -> Response:
    """Forget a peer."""
    if not await _service(request).remove(federation_id):
        raise HTTPException(404, f"No peer {federation_id}")
    return Response(status_code=204)
