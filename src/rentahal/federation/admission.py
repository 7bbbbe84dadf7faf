"""Admission of peers: the join handshake in both directions.

A joiner sends its id, callback URL, public key and a proof of the shared join
token (HMAC-SHA256 of the three), and signs the request with that key (proof of
possession). The joined side checks the policy (``token``, ``approval`` or
``open``), calls the joiner's callback URL back to see that it answers with the
same id and key, then answers with its own id, callback URL, realm types and key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rentahal.federation.identity import decode_public_key

FEDERATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def valid_federation_id(value: object) -> bool:
    """True for ids peers may use (they travel in worker names and URLs)."""
    return isinstance(value, str) and FEDERATION_ID.fullmatch(value) is not None


def join_proof(token: str, federation_id: str, public_key: str, callback_url: str) -> str:
    """The joiner's proof that it knows ``token`` (bound to its id, key and URL)."""
    message = f"{federation_id}\n{public_key}\n{callback_url}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def proof_matches(token: str, request: JoinRequest) -> bool:
    """Constant-time check of a join proof."""
    expected = join_proof(token, request.federation_id, request.public_key, request.callback_url)
    return hmac.compare_digest(expected, request.join_proof or "")


class JoinRequest(BaseModel):
    """The body of ``POST /api/federation/join`` (the seed's fields plus key and proof)."""

    model_config = ConfigDict(extra="ignore")

    federation_id: str
    callback_url: str = Field(max_length=512)
    public_key: str = Field(max_length=64)
    join_proof: str | None = Field(default=None, max_length=128)
    realm_types: list[str] = Field(default_factory=list, max_length=16)

    @field_validator("federation_id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not valid_federation_id(value):
            raise ValueError("1 to 64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("callback_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        decode_public_key(value)
        return value


def identity_document(
    federation_id: str, public_key: str, callback_url: str, realm_types: list[str]
) -> dict[str, Any]:
    """What ``GET /api/federation/identity`` and an accepted join answer."""
    return {
        "federation_id": federation_id,
        "public_key": public_key,
        "callback_url": callback_url,
        "realm_types": realm_types,
    }
