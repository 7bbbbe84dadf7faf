"""Name resolution for worker calls that keeps to ``[Security] worker_networks``.

A worker's host name was checked when a sysop added it; what it resolves to
may change afterwards (DNS rebinding). This resolver drops every resolved
address the settings refuse, so the broker never connects to one; a name with
no permitted address fails like an unreachable worker. Literal IP addresses do
not pass through a resolver; they were checked when the worker was added.
"""

from __future__ import annotations

import logging
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from rentahal.config import SecuritySettings
from rentahal.networks import parse_address
from rentahal.worker_addresses import refusal

logger = logging.getLogger(__name__)


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver, minus the addresses worker calls may not reach."""

    def __init__(self, security: SecuritySettings) -> None:
        self._security = security
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = []
        for result in results:
            address = parse_address(str(result["host"]))
            if address is not None and refusal(address, self._security) is None:
                kept.append(result)
        if not kept:
            logger.warning("%s resolves only to refused addresses; not connecting", host)
            raise OSError(f"{host} resolves only to addresses [Security] refuses for workers")
        return kept

    async def close(self) -> None:
        await self._inner.close()
