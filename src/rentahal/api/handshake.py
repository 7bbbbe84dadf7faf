"""The ``/ws`` handshake's defences: the page's ``Origin`` and the identity cookie.

A browser sends the ``user_guid`` cookie with every handshake to this host, also
when a page of another site (or a sibling subdomain: same site, other origin)
opens the socket. So a handshake whose ``Origin`` is neither the broker's own
origin nor one of ``[Security] allowed_origins`` is refused (403). A handshake
without ``Origin`` comes from a program, not a browser page, and is allowed.

The broker's own origin is the scheme and ``Host`` of the handshake; behind a
proxy listed in ``[Security] trusted_proxies`` its ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` say what the browser used.
"""

from __future__ import annotations

import logging

from starlette.requests import HTTPConnection

from rentahal.config import SecuritySettings
from rentahal.networks import in_networks, parse_address
from rentahal.origins import normalize_origin, origin_of

logger = logging.getLogger(__name__)

COOKIE_NAME = "user_guid"
COOKIE_MAX_AGE_S = 365 * 24 * 3600


def _first(value: str | None) -> str:
    return (value or "").split(",", 1)[0].strip()


def _from_trusted_proxy(conn: HTTPConnection, security: SecuritySettings) -> bool:
    peer = parse_address(conn.client.host) if conn.client else None
    return peer is not None and in_networks(peer, security.proxy_networks)


def own_origin(conn: HTTPConnection, security: SecuritySettings) -> str | None:
    """The origin of pages served by this broker, as the browser sees it."""
    scheme = conn.url.scheme
    host = conn.headers.get("host", "")
    if _from_trusted_proxy(conn, security):
        scheme = _first(conn.headers.get("x-forwarded-proto")) or scheme
        host = _first(conn.headers.get("x-forwarded-host")) or host
    return origin_of(scheme, host)


def origin_allowed(conn: HTTPConnection, security: SecuritySettings) -> bool:
    """Whether the handshake's ``Origin`` (if any) may open a session."""
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    if normalized is None:
        allowed = False
    else:
        allowed = normalized == own_origin(conn, security) or normalized in security.origins
    if not allowed:
        logger.info("refused a /ws handshake from origin %.100r", origin)
    return allowed


def cookie_headers(
    conn: HTTPConnection, guid: str, security: SecuritySettings
) -> list[tuple[bytes, bytes]]:
    """The handshake answer's ``Set-Cookie``: the user's GUID, out of reach of scripts.

    ``HttpOnly`` keeps it from page scripts (an original client's own
    ``document.cookie`` write of the same value is then ignored by the browser),
    ``SameSite=Strict`` keeps it off requests started by other sites, ``Secure``
    is added when the browser reached us over HTTPS.
    """
    secure = (own_origin(conn, security) or "").startswith("https:")
    value = (
        f"{COOKIE_NAME}={guid}; Path=/; Max-Age={COOKIE_MAX_AGE_S}; HttpOnly; SameSite=Strict"
        + ("; Secure" if secure else "")
    )
    return [(b"set-cookie", value.encode("latin-1"))]
