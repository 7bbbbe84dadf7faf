"""The provisioner interface: how the RealmScaler gets and gives back workers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class ProvisionError(Exception):
    """A provisioner could not start (or stop) a worker; the message says why."""


@dataclass
class Provisioned:
    """A worker a provisioner started: its name, ``host:port`` and the provisioner's handle."""

    name: str
    address: str
    realm: str
    query_type: str
    handle: Any = field(default=None, repr=False)


class Provisioner(Protocol):
    """Starts and stops workers for one realm.

    ``start`` returns once the worker is started (its health is checked by the
    scaler); it raises ``ProvisionError`` when it cannot. ``stop`` gives a
    worker back and must be idempotent.
    """

    async def start(
        self, name: str, realm: str, query_type: str, values: Mapping[str, str]
    ) -> Provisioned:
        """Start a worker called ``name`` for ``realm``.

        ``values`` are more template values: ``broker`` (this broker's URL) and
        ``token`` (a worker token scoped to the realm) for workers that register
        themselves.
        """
        ...

    async def stop(self, worker: Provisioned) -> None:
        """Stop a worker this provisioner started."""
        ...
