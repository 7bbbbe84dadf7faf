"""IP networks in settings: comma-separated addresses and CIDRs, and membership tests."""

from __future__ import annotations

import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str) -> list[IPNetwork]:
    """``"10.0.0.0/8, 127.0.0.1, ::1"`` as networks; ``ValueError`` naming a bad entry."""
    networks: list[IPNetwork] = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return networks


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address (brackets and IPv4-mapped IPv6 unwrapped), else ``None``."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress, networks: list[IPNetwork]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (of its own IP version)."""
    return any(address.version == net.version and address in net for net in networks)
