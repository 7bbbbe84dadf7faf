"""Seeded generators of malformed HTTP bodies and WebSocket frames, for fuzz tests.

Every generator takes a ``random.Random`` so a failure replays from its seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

#: (method, path, content type) of every route that reads a body.
BODY_ROUTES: list[tuple[str, str]] = [
    ("/api/chat", "application/json"),
    ("/api/vision", "application/json"),
    ("/api/imagine", "application/json"),
    ("/api/whisper", "application/json"),
    ("/api/bark", "application/json"),
    ("/v1/chat/completions", "application/json"),
    ("/v1/images/generations", "application/json"),
    ("/v1/audio/speech", "application/json"),
    ("/v1/audio/transcriptions", "multipart/form-data; boundary=xyz"),
    ("/api/admin/realms", "application/json"),
    ("/api/admin/pools", "application/json"),
]

_FIELDS = ["prompt", "messages", "model", "image", "audio", "input", "name", "n", "stream"]


def _nested(rng: random.Random) -> bytes:
    depth = rng.choice([600, 1100, 5000, 50_000])
    open_, close = rng.choice([("[", "]"), ('{"a":', "}")])
    return (open_ * depth + "1" + close * depth).encode()


def _bad_utf8(rng: random.Random) -> bytes:
    junk = bytes(rng.choice([0xFF, 0xFE, 0xC0, 0x80, 0xED, 0xA0]) for _ in range(rng.randint(1, 8)))
    field = rng.choice(_FIELDS)
    return b'{"' + field.encode() + b'": "' + junk + b'"}'


def _random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))


def _truncated(rng: random.Random) -> bytes:
    text = json.dumps({"prompt": "hello", "messages": [{"role": "user", "content": "hi"}]})
    return text[: rng.randint(0, len(text) - 1)].encode()


def _wrong_types(rng: random.Random) -> bytes:
    value = rng.choice(
        [None, 5, -1, 1e308, True, "text", [], {}, [1, "a"], {"x": {"y": []}}, "\u0000" * 3]
    )
    if rng.random() < 0.3:
        return json.dumps(value).encode()
    return json.dumps({rng.choice(_FIELDS): value for _ in range(rng.randint(1, 4))}).encode()


def _odd_literals(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"NaN",
            b'{"prompt": NaN}',
            b'{"n": Infinity}',
            b'{"n": ' + b"9" * rng.choice([5000, 20000]) + b"}",
            b'{"prompt": "\\ud800"}',
            b'{"prompt": "\\u0000"}',
            b"\xef\xbb\xbf{}",
            b"{}" * 3,
            b"",
            b" ",
            b'{"a": 1, "a": 2}',
        ]
    )


def _bad_multipart(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\n',
            b"--xyz\r\n\r\n--xyz--",
            b"--nope--\r\n",
            b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nw\r\n--xyz--\r\n',
            _random_bytes(rng),
        ]
    )


_MAKERS = [_nested, _bad_utf8, _random_bytes, _truncated, _wrong_types, _odd_literals]


def malformed_bodies(rng: random.Random, count: int) -> Iterator[tuple[str, str, bytes]]:
    """``count`` (path, content type, body) triples of bodies no route should accept."""
    for _ in range(count):
        path, content_type = rng.choice(BODY_ROUTES)
        if content_type.startswith("multipart") and rng.random() < 0.7:
            body = _bad_multipart(rng)
        else:
            body = rng.choice(_MAKERS)(rng)
        if rng.random() < 0.15:
            content_type = rng.choice(["text/plain", "application/x-www-form-urlencoded", ""])
        yield path, content_type, body


def malformed_frames(rng: random.Random, count: int) -> Iterator[str | bytes]:
    """``count`` WebSocket frames: broken JSON, wrong shapes, unknown and sysop-only types."""
    kinds = [
        "submit_query",
        "set_nickname",
        "vision_chunk",
        "cancel_query",
        "speech_to_text",
        "create_api_key",
        "revoke_api_key",
        "add_worker",
        "ban_user",
        "terminate_query",
        "get_pending_jobs",
        "pong",
        "no_such_type",
    ]
    for _ in range(count):
        roll = rng.random()
        if roll < 0.1:
            yield _random_bytes(rng)  # a binary frame
        elif roll < 0.25:
            yield _random_bytes(rng).decode("latin-1")
        elif roll < 0.35:
            yield _nested(rng).decode()
        elif roll < 0.45:
            yield _truncated(rng).decode()
        else:
            message: dict[str, object] = {"type": rng.choice(kinds)}
            for _ in range(rng.randint(0, 3)):
                message[rng.choice([*_FIELDS, "query", "chunk_id", "job_id", "nickname"])] = (
                    rng.choice([None, 5, "x", "", [], {}, {"prompt": 5}, "\u202e", "a" * 300])
                )
            yield json.dumps(message)
