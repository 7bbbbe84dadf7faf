"""Small helpers for base64 media sent by clients."""

from __future__ import annotations

import base64
import binascii

from rentahal.errors import QueryRejected


def strip_data_uri(data: str) -> str:
    """``data:...;base64,XXXX`` -> ``XXXX`` (other strings unchanged)."""
    if data.startswith("data:") and "," in data:
        return data.split(",", 1)[1]
    return data


def decode_audio(data: str) -> bytes:
    """Strictly decode base64 audio (a data-URI prefix is allowed)."""
    try:
        audio = base64.b64decode(strip_data_uri(data.strip()), validate=True)
    except (binascii.Error, ValueError):
        raise QueryRejected("Invalid audio data: not valid base64") from None
    if not audio:
        raise QueryRejected("Invalid audio data: empty")
    return audio
