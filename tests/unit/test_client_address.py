"""Client address resolution: X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import pytest

from rentahal.api.client_address import resolve
from rentahal.config import ConfigError, load_settings, parse_networks

TRUSTED = parse_networks("127.0.0.1, 10.0.0.0/8, ::1")


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("203.0.113.5", ["198.51.100.7"], "203.0.113.5"),  # untrusted peer: header ignored
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),  # forged left part
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),  # several headers
        ("127.0.0.1", ["10.0.0.9, 10.0.0.8"], "10.0.0.9"),  # all trusted: the left-most
        ("127.0.0.1", ["junk, 10.0.0.8"], "10.0.0.8"),  # garbage stops the walk
        ("::1", ["2001:db8::1"], "2001:db8::1"),
        ("::ffff:127.0.0.1", ["198.51.100.7"], "198.51.100.7"),  # IPv4-mapped peer
        (None, ["198.51.100.7"], "unknown"),
    ],
)
def test_resolve(peer: str | None, header: list[str], client: str) -> None:
    assert resolve(peer, header, TRUSTED) == client


def test_bad_trusted_proxies_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[Security\] trusted_proxies.*'nope'"):
        load_settings(None, environ={"RENTAHAL_SECURITY__TRUSTED_PROXIES": "10.0.0.0/8, nope"})
