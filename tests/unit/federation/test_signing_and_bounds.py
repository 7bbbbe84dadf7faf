"""Signatures between installations, and bounds on what a peer may advertise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rentahal.federation.admission import JoinRequest, join_proof, proof_matches
from rentahal.federation.identity import Identity, decode_public_key
from rentahal.federation.service import MAX_REMOTE_SLOTS, _bounded_services
from rentahal.federation.signing import SignatureError, Verifier, sign_request, sign_response

URL = "http://127.0.0.1:5000/api/federation/route"


@pytest.fixture
def alice(tmp_path: Path) -> Identity:
    return Identity.load_or_create(tmp_path / "alice.pem", "alice", "http://127.0.0.1:5000")


def _verifier(*known: Identity) -> Verifier:
    keys = {i.federation_id: decode_public_key(i.public_key) for i in known}
    return Verifier(keys.get)


def test_key_file_is_private_and_kept(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "k.pem", "x", "http://h")
    assert os.stat(tmp_path / "k.pem").st_mode & 0o777 == 0o600
    again = Identity.load_or_create(tmp_path / "k.pem", "x", "http://h")
    assert again.public_key == first.public_key


def test_signed_requests_verify_once_and_only_untouched(alice: Identity, tmp_path: Path) -> None:
    verifier = _verifier(alice)
    body = b'{"job_id": "1"}'
    headers = sign_request(alice, "POST", URL, body)
    assert verifier.verify_request("POST", URL, headers, body) == "alice"
    with pytest.raises(SignatureError, match="replayed"):
        verifier.verify_request("POST", URL, headers, body)
    headers = sign_request(alice, "POST", URL, body)
    with pytest.raises(SignatureError):
        verifier.verify_request("POST", URL, headers, b'{"job_id": "2"}')
    with pytest.raises(SignatureError):
        verifier.verify_request("POST", URL.replace("route", "advertise"), headers, body)
    with pytest.raises(SignatureError):
        verifier.verify_request("GET", URL, headers, body)
    with pytest.raises(SignatureError, match="not signed"):
        verifier.verify_request("POST", URL, {}, body)
    mallory = Identity.load_or_create(tmp_path / "m.pem", "alice", "http://evil")
    with pytest.raises(SignatureError):
        verifier.verify_request("POST", URL, sign_request(mallory, "POST", URL, body), body)
    stranger = Identity.load_or_create(tmp_path / "s.pem", "stranger", "http://s")
    with pytest.raises(SignatureError, match="unknown federation"):
        verifier.verify_request("POST", URL, sign_request(stranger, "POST", URL, body), body)


def test_signed_responses_name_their_signer(alice: Identity, tmp_path: Path) -> None:
    bob = Identity.load_or_create(tmp_path / "bob.pem", "bob", "http://b")
    verifier = _verifier(alice, bob)
    headers = sign_response(alice, 200, b"{}")
    with pytest.raises(SignatureError, match="expected 'bob'"):
        verifier.verify_response(200, headers, b"{}", "bob")
    headers = sign_response(alice, 200, b"{}")
    with pytest.raises(SignatureError):
        verifier.verify_response(500, headers, b"{}", "alice")


def test_join_proof_binds_id_key_and_url(alice: Identity) -> None:
    proof = join_proof("sekrit-token", "alice", alice.public_key, "http://127.0.0.1:5000")
    request = JoinRequest(
        federation_id="alice",
        callback_url="http://127.0.0.1:5000",
        public_key=alice.public_key,
        join_proof=proof,
    )
    assert proof_matches("sekrit-token", request)
    assert not proof_matches("other-token", request)
    moved = request.model_copy(update={"callback_url": "http://evil:5000"})
    assert not proof_matches("sekrit-token", moved)


@pytest.mark.parametrize(
    "bad",
    [
        {"federation_id": "a b", "callback_url": "http://x", "public_key": "AAAA"},
        {"federation_id": "ok", "callback_url": "ftp://x", "public_key": "AAAA"},
        {"federation_id": "ok", "callback_url": "http://x", "public_key": "not-base64!"},
        {"federation_id": "x" * 65, "callback_url": "http://x", "public_key": "AAAA"},
    ],
)
def test_malformed_joins_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        JoinRequest.model_validate(bad)


def test_absurd_advertisements_are_bounded() -> None:
    services = _bounded_services(
        {
            "chat": {
                "workers": 10**9,
                "free_capacity": 10**6,
                "queue_depth": -5,
                "est_wait_s": float("inf"),
                "models": ["m" * 500, 3, *[f"x{i}" for i in range(200)]],
                "realm": "$CHAT" * 100,
            },
            "teleport": {"workers": 1},
            "vision": "garbage",
        }
    )
    assert set(services) == {"chat"}
    chat = services["chat"]
    assert chat["workers"] == 1000 and chat["free_capacity"] == MAX_REMOTE_SLOTS
    assert chat["queue_depth"] == 0 and chat["est_wait_s"] == 86_400
    assert len(chat["models"]) == 50 and len(chat["models"][0]) == 100
    assert len(chat["realm"]) == 64
    with pytest.raises(ValueError):
        _bounded_services(["not", "an", "object"])
