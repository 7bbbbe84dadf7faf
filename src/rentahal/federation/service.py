"""FederationService: peers, admission, discovery, advertisements and the routing gate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rentahal.backends import register_backend
from rentahal.config import Settings
from rentahal.federation.admission import (
    JoinRequest,
    identity_document,
    join_proof,
    proof_matches,
    valid_federation_id,
)
from rentahal.federation.client import PeerCallFailed, PeerClient
from rentahal.federation.context import ROUTING_JOB
from rentahal.federation.identity import Identity
from rentahal.federation.metrics import FederationCollector, FederationMetrics
from rentahal.federation.peers import Peer, PeerStore
from rentahal.federation.routing import FederationBackend, IncomingRuns
from rentahal.federation.signing import SignatureError, Verifier
from rentahal.models import FEDERATION_PROTOCOL, QUERY_TYPES, AIWorker
from rentahal.realms.config import (
    DiscoveryConfig,
    FederationConfig,
    callback_url,
    load_realms,
    with_identity,
)
from rentahal.realms.workers import WorkerState
from rentahal.storage.database import Storage

if TYPE_CHECKING:
    from rentahal.broker import Broker

logger = logging.getLogger(__name__)

PROTOCOL = FEDERATION_PROTOCOL
MAX_REMOTE_SLOTS = 64  # an advertisement never gives a peer more slots than this
MAX_MODELS = 50
MAX_PEERS = 256


class JoinRefused(Exception):
    """The other installation refused our join (its reason is the message)."""


class AdmissionRefused(Exception):
    """A join that is refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def worker_name(peer_id: str, query_type: str) -> str:
    """The name of the virtual worker that stands for a peer's service of one type."""
    return f"fed.{peer_id}.{query_type}"


def _bounded_services(raw: object) -> dict[str, dict[str, Any]]:
    """A peer's advertised services with every figure clamped to sane bounds."""
    if not isinstance(raw, dict):
        raise ValueError("services must be an object")
    services: dict[str, dict[str, Any]] = {}
    for query_type, item in raw.items():
        if query_type not in QUERY_TYPES or not isinstance(item, dict):
            continue

        def number(key: str, high: float, item: dict[str, Any] = item) -> float:
            value = item.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return 0.0
            return float(min(max(value, 0), high))

        models = item.get("models", [])
        services[query_type] = {
            "realm": str(item.get("realm") or "")[:64],
            "workers": int(number("workers", 1000)),
            "free_capacity": int(number("free_capacity", MAX_REMOTE_SLOTS)),
            "queue_depth": int(number("queue_depth", 100_000)),
            "est_wait_s": round(number("est_wait_s", 86_400), 3),
            "models": [m[:100] for m in models if isinstance(m, str)][:MAX_MODELS]
            if isinstance(models, list)
            else [],
        }
    return services


class FederationService:
    """This installation's part in a federation of independent installations."""

    def __init__(
        self,
        identity: Identity,
        config: FederationConfig,
        discovery: DiscoveryConfig,
        store: PeerStore,
        broker: Broker,
    ) -> None:
        self.identity = identity
        self.config = config
        self.discovery = discovery
        self.store = store
        self.broker = broker
        self._parts = broker.parts()
        self.peers: dict[str, Peer] = {}
        self.verifier = Verifier(self._key_of)
        self.client = PeerClient(identity, self._parts.client, self.verifier)
        self.metrics = FederationMetrics()
        self.incoming = IncomingRuns(
            broker, store.storage, identity.federation_id, config.max_hops, self._accepted
        )
        self._parts.metrics.registry.register(
            FederationCollector(self.metrics, lambda: list(self.peers.values()))
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored peers, stand their services up as workers, start discovery."""
        for peer in await self.store.load():
            self.peers[peer.federation_id] = peer
            self._apply_services(peer)
        self._parts.registry.remote_gate = self.gate
        register_backend(FederationBackend(self))
        self._task = asyncio.create_task(self._loop(), name="federation-discovery")

    async def stop(self) -> None:
        """Stop the discovery loop and the waits for incoming runs."""
        await self.incoming.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _accepted(self, peer_id: str) -> None:
        self.metrics.queries_in += 1
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.queries_in += 1

    def _key_of(self, federation_id: str) -> Any:
        peer = self.peers.get(federation_id)
        if peer is None or peer.state in ("pending", "blocked"):
            return None
        return peer.key

    # -- what we offer -----------------------------------------------------------

    def realm_types(self) -> list[str]:
        """Query types this installation serves with workers of its own."""
        return sorted(
            {
                s.worker.type
                for s in self._parts.registry.states()
                if s.worker.protocol != PROTOCOL and not s.worker.is_blacklisted
            }
        )

    def identity_document(self) -> dict[str, Any]:
        """Who we are (served unsigned: it is how a joiner learns our key)."""
        ident = self.identity
        return identity_document(
            ident.federation_id, ident.public_key, ident.callback_url, self.realm_types()
        )

    async def services(self) -> dict[str, dict[str, Any]]:
        """Per query type: realm, workers, free capacity, queue depth, wait and models."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        broker = self.broker
        for query_type in QUERY_TYPES:
            local = [
                s
                for s in self._parts.registry.states()
                if s.worker.type == query_type
                and s.worker.protocol != PROTOCOL
                and not s.worker.is_blacklisted
            ]
            if not local:
                continue
            usable = [s for s in local if s.available(now, ignore_saturation=True)]
            capacity = sum(s.worker.max_concurrency for s in usable)
            free = sum(max(0, s.worker.max_concurrency - s.in_flight) for s in usable)
            realm = ""
            depth = 0
            if broker.realms is not None:
                primary = broker.realms.registry.primary_for(query_type)
                if primary is not None:
                    realm = primary.name
                    depth = await self._parts.bus.depth(realm)
            models = sorted({m for s in usable for m in s.worker.models})
            out[query_type] = {
                "realm": realm,
                "workers": len(usable),
                "free_capacity": free,
                "queue_depth": depth,
                "est_wait_s": round(depth / max(1, capacity), 3),
                "models": models[:MAX_MODELS],
            }
        return out

    # -- the routing gate --------------------------------------------------------

    def gate(self, states: list[WorkerState]) -> list[WorkerState]:
        """Which of ``states`` may be used for the job being routed now.

        Local workers first. A peer is used when nothing local can serve, when
        the job has waited longer than ``route_when_wait_s``, or when its query
        type is pinned to that peer; never a peer the query already visited,
        and never past ``max_hops``.
        """
        remote = [s for s in states if s.worker.protocol == PROTOCOL]
        if not remote:
            return states
        local = [s for s in states if s.worker.protocol != PROTOCOL]
        job = ROUTING_JOB.get()
        query = job.query if job is not None else None
        allowed = []
        for state in remote:
            peer_id = state.worker.address
            peer = self.peers.get(peer_id)
            if peer is None or not peer.usable():
                continue
            if query is not None and (
                peer_id in query.federation_visited
                or query.federation_hops + 1 > self.config.max_hops
            ):
                continue
            allowed.append(state)
        if not allowed:
            return local
        allowed = self._least_waiting(allowed)
        pinned = self.config.pins.get(allowed[0].worker.type)
        if pinned is not None:
            chosen = [s for s in allowed if s.worker.address == pinned]
            if chosen:
                return chosen
        now = time.monotonic()
        if not any(s.available(now, ignore_saturation=True) for s in local):
            return local + allowed
        if job is not None and time.time() - job.submitted_at > self.config.route_when_wait_s:
            return local + allowed
        return local

    def _least_waiting(self, remote: list[WorkerState]) -> list[WorkerState]:
        """The peers whose advertised wait is within a second of the shortest."""

        def wait(state: WorkerState) -> float:
            peer = self.peers[state.worker.address]
            service = peer.services.get(state.worker.type, {})
            return float(service.get("est_wait_s", 0.0))

        shortest = min(wait(s) for s in remote)
        pinned = self.config.pins.get(remote[0].worker.type)
        return [s for s in remote if wait(s) <= shortest + 1.0 or s.worker.address == pinned]

    def peer_for(self, worker: AIWorker) -> Peer | None:
        """The peer a virtual worker stands for."""
        return self.peers.get(worker.address)

    def _apply_services(self, peer: Peer) -> None:
        """Make the registry's virtual workers match the peer's advertisement."""
        registry = self._parts.registry
        for query_type in QUERY_TYPES:
            name = worker_name(peer.federation_id, query_type)
            service = peer.services.get(query_type)
            offered = peer.state == "active" and service is not None and service["workers"] > 0
            current = registry.get(name)
            if not offered:
                if current is not None:
                    registry.remove(name)
                continue
            assert service is not None
            slots = max(1, min(MAX_REMOTE_SLOTS, service["free_capacity"] or 1))
            worker = AIWorker(
                name=name,
                address=peer.federation_id,
                type=query_type,  # type: ignore[arg-type]
                protocol=PROTOCOL,
                max_concurrency=slots,
                models=service["models"],
            )
            if current is None or current.worker.model_dump(
                exclude={"last_active", "health_score", "is_blacklisted"}
            ) != worker.model_dump(exclude={"last_active", "health_score", "is_blacklisted"}):
                registry.add(worker)

    # -- admission ---------------------------------------------------------------

    async def admit(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        """Handle ``POST /api/federation/join``; ``AdmissionRefused`` says why not."""
        import orjson

        try:
            request = JoinRequest.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            raise AdmissionRefused(422, f"malformed join: {exc}") from None
        if request.federation_id == self.identity.federation_id:
            raise AdmissionRefused(409, "that is this installation's own federation id")
        known = self.peers.get(request.federation_id)
        if known is not None and known.state == "blocked":
            raise AdmissionRefused(403, "this federation is blocked here")
        if known is not None and known.public_key != request.public_key:
            raise AdmissionRefused(409, "a different key is on record for this federation id")
        try:
            signer = self.verifier.verify_request(method, url, headers, body, key=_key(request))
        except SignatureError as exc:
            raise AdmissionRefused(401, str(exc)) from None
        if signer != request.federation_id:
            raise AdmissionRefused(401, "the join is not signed by the joining federation")
        trust = self.config.trust
        if trust == "token":
            token = self.config.join_token
            if not token:
                raise AdmissionRefused(403, "this installation admits peers by approval only")
            if not proof_matches(token, request):
                raise AdmissionRefused(401, "wrong join token")
        await self._check_callback(request)
        if len(self.peers) >= MAX_PEERS and known is None:
            raise AdmissionRefused(503, "this installation has as many peers as it keeps")
        if known is None:
            peer = Peer(request.federation_id, request.callback_url, request.public_key)
            peer.state = "pending" if trust == "approval" else "active"
        else:
            peer = known
            if peer.state == "down":
                peer.state = "active"
        peer.callback_url = request.callback_url
        peer.last_seen = time.time()
        self.peers[peer.federation_id] = peer
        await self.store.save(peer)
        if peer.state == "pending":
            logger.info("federation %s asks to join; waiting for a sysop", peer.federation_id)
            return {"status": "pending", "federation_id": self.identity.federation_id}
        logger.info("federation %s joined", peer.federation_id)
        self._wake.set()
        return {"status": "accepted", **self.identity_document()}

    async def _check_callback(self, request: JoinRequest) -> None:
        """The joiner's callback URL must answer with the joining id and key."""
        try:
            status, doc, _rtt = await self.client.exchange(
                request.callback_url,
                "GET",
                "/api/federation/identity",
                None,
                self.config.request_timeout_s,
                expect=None,
            )
        except PeerCallFailed as exc:
            raise AdmissionRefused(422, f"callback_url does not answer: {exc}") from None
        if (
            status != 200
            or doc.get("federation_id") != request.federation_id
            or doc.get("public_key") != request.public_key
        ):
            raise AdmissionRefused(422, "callback_url does not answer with the joining id and key")

    async def join(self, base_url: str) -> Peer | None:
        """Ask the installation at ``base_url`` to admit us; the peer once accepted."""
        timeout = self.config.request_timeout_s
        status, doc, _rtt = await self.client.exchange(
            base_url, "GET", "/api/federation/identity", None, timeout, expect=None
        )
        their_id, their_key = doc.get("federation_id"), doc.get("public_key")
        if status != 200 or not valid_federation_id(their_id) or not isinstance(their_key, str):
            raise PeerCallFailed(f"{base_url}: no federation identity", connected=True)
        assert isinstance(their_id, str)
        if their_id == self.identity.federation_id:
            return None
        known = self.peers.get(their_id)
        if known is not None and known.state == "blocked":
            return None
        ident = self.identity
        body = {
            "federation_id": ident.federation_id,
            "callback_url": ident.callback_url,
            "public_key": ident.public_key,
            "realm_types": self.realm_types(),
            "join_proof": (
                join_proof(
                    self.config.join_token,
                    ident.federation_id,
                    ident.public_key,
                    ident.callback_url,
                )
                if self.config.join_token
                else None
            ),
        }
        candidate = Peer(their_id, str(doc.get("callback_url") or base_url).rstrip("/"), their_key)
        try:
            candidate.key  # noqa: B018 - a malformed key raises here
        except ValueError as exc:
            raise PeerCallFailed(f"{base_url}: {exc}", connected=True) from None
        # The answer is signed by the key the identity document named.
        self.peers.setdefault(their_id, Peer(their_id, candidate.callback_url, their_key, "down"))
        try:
            status, answer = await self.client.call(
                self.peers[their_id], "POST", "/api/federation/join", body, timeout
            )
        finally:
            if known is None and self.peers[their_id].state == "down" and their_id in self.peers:
                # Only kept once the join is accepted (below).
                self.peers.pop(their_id, None)
        if status == 202 and answer.get("status") == "pending":
            logger.info("join to %s waits for a sysop there", base_url)
            return None
        if status != 200 or answer.get("status") != "accepted":
            raise JoinRefused(str(answer.get("detail") or f"status {status}"))
        if answer.get("federation_id") != their_id or answer.get("public_key") != their_key:
            raise PeerCallFailed(f"{base_url}: accepted with another identity", connected=True)
        peer = known or candidate
        peer.callback_url = candidate.callback_url
        if peer.state != "blocked":
            peer.state = "active"
        peer.last_seen = time.time()
        self.peers[their_id] = peer
        await self.store.save(peer)
        logger.info("joined federation %s at %s", their_id, base_url)
        return peer

    # -- sysop actions -----------------------------------------------------------

    async def set_state(self, federation_id: str, state: str) -> Peer | None:
        """Approve (``active``) or block a peer."""
        peer = self.peers.get(federation_id)
        if peer is None:
            return None
        peer.state = "active" if state == "active" else "blocked"
        await self.store.save(peer)
        self._apply_services(peer)
        self._wake.set()
        return peer

    async def remove(self, federation_id: str) -> bool:
        """Forget a peer (it may join again by the usual rules)."""
        peer = self.peers.pop(federation_id, None)
        if peer is not None:
            peer.services = {}
            peer.state = "blocked"
            self._apply_services(peer)
        return await self.store.delete(federation_id) or peer is not None

    # -- discovery ---------------------------------------------------------------

    def accept_advertisement(self, peer_id: str, payload: dict[str, Any]) -> None:
        """A peer's ``POST /api/federation/advertise`` (already verified)."""
        peer = self.peers[peer_id]
        peer.services = _bounded_services(payload.get("services", {}))
        peer.last_seen = time.time()
        if peer.state == "down":
            peer.state = "active"
        self._apply_services(peer)

    def discover_document(self) -> dict[str, Any]:
        """The peers we know and their services (for ``GET /api/federation/discover``)."""
        return {
            "federation_id": self.identity.federation_id,
            "peers": [
                {
                    "federation_id": p.federation_id,
                    "callback_url": p.callback_url,
                    "public_key": p.public_key,
                    "services": p.services,
                }
                for p in self.peers.values()
                if p.state == "active"
            ],
        }

    async def _loop(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                logger.exception("federation round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.discovery.advertise_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def round(self) -> None:
        """One discovery round: join bootstrap nodes, advertise to and learn from peers."""
        if not self.discovery.enabled:
            return
        known_urls = {p.callback_url for p in self.peers.values()}
        for url in self.discovery.bootstrap_nodes:
            if url.rstrip("/") not in known_urls:
                await self._try_join(url)
        services = await self.services()
        learned: dict[str, str] = {}
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if peer.state not in ("active", "down") or now < peer.retry_at:
                continue
            try:
                await self.client.call(
                    peer,
                    "POST",
                    "/api/federation/advertise",
                    {"federation_id": self.identity.federation_id, "services": services},
                    self.config.request_timeout_s,
                )
                status, doc = await self.client.call(
                    peer, "GET", "/api/federation/discover", None, self.config.request_timeout_s
                )
                self._apply_services(peer)
                if status == 200:
                    for item in doc.get("peers", [])[:MAX_PEERS]:
                        if isinstance(item, dict) and valid_federation_id(
                            item.get("federation_id")
                        ):
                            learned[str(item["federation_id"])] = str(item.get("callback_url", ""))
            except PeerCallFailed as exc:
                logger.info("federation %s unreachable: %s", peer.federation_id, exc)
                peer.failed(self.discovery.advertise_interval)
                self._apply_services(peer)
        for federation_id, url in learned.items():
            if federation_id != self.identity.federation_id and federation_id not in self.peers:
                await self._try_join(url)

    async def _try_join(self, url: str) -> None:
        if not url.startswith(("http://", "https://")):
            return
        try:
            await self.join(url)
        except (PeerCallFailed, JoinRefused) as exc:
            logger.info("could not join %s: %s", url, exc)

    # -- views -------------------------------------------------------------------

    def peer_views(self) -> list[dict[str, Any]]:
        """Every peer for the console and the status route."""
        return [p.view() for p in self.peers.values()]


def _key(request: JoinRequest) -> Any:
    from rentahal.federation.identity import decode_public_key

    return decode_public_key(request.public_key)


def key_file(settings: Settings) -> Path:
    """Where the private key lives: beside realms.yml, outside the database."""
    return Path(settings.broker.realms_file).parent / "federation_key.pem"


async def start_federation(
    settings: Settings, storage: Storage, broker: Broker
) -> FederationService:
    """This installation's federation service, started (identity made on first start)."""
    path = Path(settings.broker.realms_file)
    # The shared realm configuration (every node of the installation agrees), else the file.
    shared = broker.realms.registry.file if broker.realms is not None else None
    realms = (
        shared
        if shared is not None and shared.federation_id
        else with_identity(path, load_realms(path))
    )
    assert realms.federation_id is not None
    identity = Identity.load_or_create(
        key_file(settings),
        realms.federation_id,
        callback_url(realms, settings.server.host, settings.server.port),
    )
    service = FederationService(
        identity, realms.federation, realms.discovery, PeerStore(storage), broker
    )
    await service.start()
    return service
