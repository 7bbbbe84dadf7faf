"""Which client a request or socket comes from, believing ``X-Forwarded-For`` only from proxies.

Shares (queued queries, uploads, connections) are counted per client
address, so a client cannot escape them by making a new user per connection.
Behind a reverse proxy every peer is the proxy: when the peer is one of
``[Security] trusted_proxies``, the client is the right-most address of
``X-Forwarded-For`` that is not a trusted proxy (the left part of the header
is the client's own, and may be forged).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address

from starlette.types import ASGIApp, Receive, Scope, Send

from rentahal.config import SecuritySettings
from rentahal.networks import IPNetwork
from rentahal.shares import client_address

UNKNOWN = "unknown"


def _ip(text: str) -> IPv4Address | IPv6Address | None:
    try:
        ip = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip


@lru_cache(maxsize=1024)
def _peer(peer: str) -> tuple[IPv4Address | IPv6Address | None, str]:
    """A socket peer's address and its text (cached: peers recur, and are short)."""
    ip = _ip(peer)
    return ip, peer if ip is None else str(ip)


def _trusted(ip: IPv4Address | IPv6Address, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def resolve(peer: str | None, forwarded_for: Iterable[str], networks: tuple[IPNetwork, ...]) -> str:
    """The client address of a connection from ``peer`` carrying ``forwarded_for`` headers."""
    peer_ip, peer_text = _peer(peer or "")
    if peer_ip is None:
        return peer or UNKNOWN
    if not networks or not _trusted(peer_ip, networks):
        return peer_text
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    client = peer_ip
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:  # garbage: stop at the last hop we could believe
            break
        client = ip
        if not _trusted(ip, networks):
            break
    return str(client)


def scope_address(scope: Scope, networks: tuple[IPNetwork, ...]) -> str:
    """The client address of an HTTP request or WebSocket (see :func:`resolve`)."""
    peer = scope.get("client")
    headers = (
        [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        if networks  # believed only from a trusted proxy: without one, never read
        else []
    )
    return resolve(peer[0] if peer else None, headers, networks)


class ClientAddressMiddleware:
    """Sets :data:`rentahal.shares.client_address` for each HTTP request and WebSocket."""

    def __init__(self, app: ASGIApp, security: SecuritySettings) -> None:
        self.app = app
        self.networks = security.trusted_networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = client_address.set(scope_address(scope, self.networks))
        try:
            await self.app(scope, receive, send)
        finally:
            client_address.reset(token)
