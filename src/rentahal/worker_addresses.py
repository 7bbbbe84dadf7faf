"""Which addresses a sysop may give a worker: ``[Security] worker_networks`` minus the denied ones.

The broker sends users' prompts (and API keys of hosted services) to a worker's
address, and relays what comes back. So an address must not reach what only the
broker's machine can reach: cloud metadata services (link-local
169.254.169.254, fd00:ec2::254, 100.100.100.200) are denied by default, loopback
and private ranges are allowed (workers usually live there). A host name is
resolved when the worker is added and every address it names is checked; a
name that does not resolve yet is accepted (the worker is then unreachable and
its health checks say so). Each connection checks again what the name resolves
to then (``backends/resolver.py``), so a name that later points elsewhere
(DNS rebinding) is not followed there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import urlsplit

from rentahal.config import SecuritySettings
from rentahal.errors import QueryRejected
from rentahal.models import AIWorker
from rentahal.networks import IPAddress, in_networks, parse_address, parse_networks

logger = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 3.0
_FORBIDDEN_CHARS = frozenset("@?#\\ \t\r\n")


async def _resolve(host: str) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        logger.warning("worker host %s does not resolve (yet); accepted", host)
        return []
    found = (parse_address(str(info[4][0])) for info in infos)
    return [a for a in found if a is not None]


def refusal(address: IPAddress, security: SecuritySettings) -> str | None:
    """Why ``address`` may not be a worker's (a phrase naming the setting), or ``None``."""
    if in_networks(address, parse_networks(security.denied_worker_networks)):
        return (
            "is in a refused network ([Security] denied_worker_networks: "
            "link-local and cloud metadata by default)"
        )
    if not in_networks(address, parse_networks(security.worker_networks)):
        return "is outside [Security] worker_networks"
    return None


async def check_worker_address(worker: AIWorker, security: SecuritySettings) -> None:
    """``QueryRejected`` (a sysop-facing sentence) unless ``worker.address`` may be used."""
    if any(ch in _FORBIDDEN_CHARS or not ch.isprintable() for ch in worker.address):
        raise QueryRejected(
            f"Worker address {worker.address!r} may not contain '@', '?', '#', '\\' or spaces"
        )
    try:
        host = urlsplit(worker.base_url).hostname
    except ValueError:
        host = None
    if not host:
        raise QueryRejected(f"Worker address {worker.address!r} names no host")
    literal = parse_address(host)
    addresses = [literal] if literal is not None else await _resolve(host)
    for address in addresses:
        reason = refusal(address, security)
        if reason is not None:
            raise QueryRejected(f"Worker address {worker.address} ({address}) {reason}")
