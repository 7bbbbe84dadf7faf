"""This installation's federation identity: its id and its Ed25519 key pair."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rentahal.errors import ConfigError

KEY_FILE_MODE = 0o600


def encode_public_key(key: Ed25519PublicKey) -> str:
    """The raw 32-byte public key, base64 (how peers exchange keys)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def decode_public_key(text: str) -> Ed25519PublicKey:
    """A peer's public key from its base64 form; ``ValueError`` when malformed."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("public_key is not base64") from exc
    if len(raw) != 32:
        raise ValueError("public_key must be a raw 32-byte Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this installation is to its peers."""

    federation_id: str
    private_key: Ed25519PrivateKey
    callback_url: str

    @property
    def public_key(self) -> str:
        """The public key as peers store it."""
        return encode_public_key(self.private_key.public_key())

    @classmethod
    def load_or_create(cls, path: Path, federation_id: str, callback_url: str) -> Identity:
        """Read the key file at ``path``, or make a new key pair there (mode 0600)."""
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, KEY_FILE_MODE)
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise ConfigError(f"{path}: not a PEM private key") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{path}: not an Ed25519 private key")
            return cls(federation_id, key, callback_url)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        return cls(federation_id, key, callback_url)
