"""Shared helpers of the backends and the protocol registry."""

from __future__ import annotations

import pytest

from rentahal.backends import get_backend
from rentahal.backends._http import pick_model, service_url, strip_data_uri
from rentahal.models import PROTOCOLS


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("api.anthropic.com/v1/messages", "https://api.anthropic.com/v1/messages"),
        ("api-inference.huggingface.co", "https://api-inference.huggingface.co"),
        ("example.org:443", "https://example.org:443"),
        ("127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("localhost", "http://localhost"),
        ("gpu1:11434", "http://gpu1:11434"),
        ("[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_service_url(address: str, url: str) -> None:
    assert service_url(address) == url


def test_pick_model() -> None:
    assert pick_model("asked", ["listed"], "default") == "asked"
    assert pick_model("", ["listed", "other"], "default") == "listed"
    assert pick_model("", [], "default") == "default"
    assert pick_model("", [], None) is None


def test_strip_data_uri() -> None:
    assert strip_data_uri("data:image/png;base64,AAAA") == "AAAA"
    assert strip_data_uri("AAAA") == "AAAA"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_has_a_backend(protocol: str) -> None:
    backend = get_backend(protocol)
    assert backend.protocol == protocol
    for method in ("run", "probe", "list_models"):
        assert callable(getattr(backend, method))


def test_unknown_protocol_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: a1111, claude"):
        get_backend("grpc")
