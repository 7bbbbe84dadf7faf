"""HTTP Message Signatures (RFC 9421) on every call between installations.

Requests cover ``@method``, ``@path`` and ``content-digest`` with ``created``,
``nonce``, ``keyid`` (the sender's federation id) and the tag
``rentahal-federation``; responses cover ``@status`` and ``content-digest``.
Verification refuses missing or bad signatures, signatures older than
``MAX_AGE_S`` and nonces seen before.
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from rentahal.federation.identity import Identity

TAG = "rentahal-federation"
MAX_AGE_S = 300
NONCE_CACHE_SIZE = 100_000
REQUEST_COMPONENTS = ("@method", "@path", "content-digest")
RESPONSE_COMPONENTS = ("@status", "content-digest")


class SignatureError(Exception):
    """A federation call whose signature is missing, bad, stale or replayed."""


@dataclass
class _Request:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Response:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)
    request: Any = None


class _Keys(HTTPSignatureKeyResolver):
    def __init__(
        self, identity: Identity | None, lookup: Callable[[str], Ed25519PublicKey | None]
    ) -> None:
        self.identity = identity
        self.lookup = lookup

    def resolve_private_key(self, key_id: str) -> Any:
        assert self.identity is not None and key_id == self.identity.federation_id
        return self.identity.private_key

    def resolve_public_key(self, key_id: str) -> Any:
        key = self.lookup(key_id)
        if key is None:
            raise SignatureError(f"unknown federation {key_id!r}")
        return key


def _signer(identity: Identity) -> HTTPMessageSigner:
    return HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519, key_resolver=_Keys(identity, lambda _k: None)
    )


def sign_request(identity: Identity, method: str, url: str, body: bytes) -> dict[str, str]:
    """Headers that sign a request of ``method`` to ``url`` with ``body``."""
    message = _Request(method.upper(), url, {"content-type": "application/json"})
    _signer(identity).sign(
        message,
        key_id=identity.federation_id,
        created=datetime.datetime.now(datetime.UTC),
        nonce=secrets.token_urlsafe(16),
        tag=TAG,
        covered_component_ids=REQUEST_COMPONENTS,
        body=body,
    )
    return message.headers


def sign_response(identity: Identity, status: int, body: bytes) -> dict[str, str]:
    """Headers that sign a response with ``status`` and ``body``."""
    message = _Response(status, {"content-type": "application/json"})
    _signer(identity).sign(
        message,
        key_id=identity.federation_id,
        created=datetime.datetime.now(datetime.UTC),
        nonce=secrets.token_urlsafe(16),
        tag=TAG,
        covered_component_ids=RESPONSE_COMPONENTS,
        body=body,
    )
    return message.headers


class NonceCache:
    """Nonces seen within the signature age limit (bounded; oldest forgotten first)."""

    def __init__(self, ttl_s: float = MAX_AGE_S + 10, size: int = NONCE_CACHE_SIZE) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, nonce: str) -> bool:
        """True the first time ``nonce`` is seen; False for a replay."""
        now = time.monotonic()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl_s and len(self._seen) < self.size:
                break
            self._seen.pop(oldest)
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


class Verifier:
    """Checks signatures against the keys of known peers (or a key given for one call)."""

    def __init__(self, lookup: Callable[[str], Ed25519PublicKey | None]) -> None:
        self.lookup = lookup
        self.nonces = NonceCache()

    def _verify(self, message: Any, body: bytes, key: Ed25519PublicKey | None) -> str:
        lookup = self.lookup if key is None else (lambda _k: key)
        verifier = HTTPMessageVerifier(
            signature_algorithm=algorithms.ED25519, key_resolver=_Keys(None, lookup)
        )
        try:
            results = verifier.verify(
                message,
                max_age=datetime.timedelta(seconds=MAX_AGE_S),
                expect_tag=TAG,
                require_components=(
                    REQUEST_COMPONENTS if isinstance(message, _Request) else RESPONSE_COMPONENTS
                ),
                body=body,
            )
        except SignatureError:
            raise
        except (HTTPMessageSignaturesException, ValueError, KeyError, TypeError) as exc:
            raise SignatureError(f"bad signature: {exc}") from None
        if len(results) != 1:
            raise SignatureError("exactly one signature is expected")
        params = results[0].parameters
        nonce = params.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise SignatureError("the signature has no nonce")
        if not self.nonces.first_use(nonce):
            raise SignatureError("replayed nonce")
        return str(params.get("keyid", ""))

    def verify_request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        key: Ed25519PublicKey | None = None,
    ) -> str:
        """The sender's federation id; ``SignatureError`` when the request is not trusted."""
        if "signature" not in {k.lower() for k in headers}:
            raise SignatureError("the request is not signed")
        return self._verify(_Request(method.upper(), url, dict(headers)), body, key)

    def verify_response(
        self, status: int, headers: Mapping[str, str], body: bytes, expect: str
    ) -> None:
        """Check that a response was signed by ``expect``."""
        if "signature" not in {k.lower() for k in headers}:
            raise SignatureError("the response is not signed")
        sender = self._verify(_Response(status, dict(headers)), body, None)
        if sender != expect:
            raise SignatureError(f"signed by {sender!r}, expected {expect!r}")
