"""Web origins (``scheme://host[:port]``), normalized so equal origins compare equal."""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str | None:
    """``text`` as ``scheme://host[:port]`` (lower case, default port dropped), else ``None``.

    Only ``http`` and ``https`` origins exist for pages; ``null`` and anything
    with a path, user or query is not an origin.
    """
    text = text.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of(scheme: str, host_header: str) -> str | None:
    """The origin a page served over ``scheme`` (http/https/ws/wss) from ``host_header`` has."""
    page_scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if not host_header or "/" in host_header or "@" in host_header:
        return None
    return normalize_origin(f"{page_scheme}://{host_header}")
