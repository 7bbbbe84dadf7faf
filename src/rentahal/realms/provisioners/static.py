"""A provisioner over a fixed list of standby workers, taken in and out."""

from __future__ import annotations

from collections.abc import Mapping

from rentahal.realms.provisioners.base import Provisioned, ProvisionError


class StaticProvisioner:
    """Hands out the first standby address not in use; ``stop`` puts it back."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = list(addresses)
        self.in_use: set[str] = set()

    async def start(
        self, name: str, realm: str, query_type: str, values: Mapping[str, str]
    ) -> Provisioned:
        """Take a standby worker."""
        for address in self.addresses:
            if address not in self.in_use:
                self.in_use.add(address)
                return Provisioned(name, address, realm, query_type)
        raise ProvisionError("every standby worker is in use")

    async def stop(self, worker: Provisioned) -> None:
        """Put the worker back on standby."""
        self.in_use.discard(worker.address)
