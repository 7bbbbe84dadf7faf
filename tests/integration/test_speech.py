"""Speech in and out through the reference worker registered as an ``openai`` speech worker."""

from __future__ import annotations

import base64
import io
import math
import struct
import time
import wave
from collections.abc import Callable
from typing import Any

from tests.support.client import WSClient
from tests.support.servers import BrokerServer, demo_worker_records

BrokerFactory = Callable[..., BrokerServer]
Connect = Callable[..., Any]


def _wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    """A real mono 16-bit WAV: a 440 Hz tone."""
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _assert_wav(b64: str) -> wave.Wave_read:
    audio = base64.b64decode(b64, validate=True)
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    reader = wave.open(io.BytesIO(audio), "rb")
    assert reader.getnframes() > 0
    return reader


def _rows(server: BrokerServer, guid: str | None) -> list[dict[str, Any]]:
    assert guid is not None
    return server.call(server.storage.recent_queries(guid))  # type: ignore[no-any-return]


async def test_text_to_speech_returns_wav(connect: Connect) -> None:
    client = await connect()
    await client.send({"type": "text_to_speech", "text": "hello from the broker"})
    message = await client.expect_any(("speech_result", "error"))
    assert message["type"] == "speech_result", message
    reader = _assert_wav(message["audio"])
    assert reader.getframerate() > 0


async def test_speech_to_text_transcribes_a_real_wav(connect: Connect) -> None:
    client = await connect()
    audio = _wav()
    await client.send({"type": "speech_to_text", "audio": _b64(audio)})
    message = await client.expect_any(("transcription_result", "error"))
    assert message["type"] == "transcription_result", message
    assert f"received {len(audio)} bytes of WAV audio" in message["text"]
    # a data: URI, as browsers send it, works too
    await client.send({"type": "speech_to_text", "audio": "data:audio/wav;base64," + _b64(audio)})
    again = await client.expect_any(("transcription_result", "error"))
    assert again["type"] == "transcription_result"


async def test_speech_query_is_transcribed_then_answered_as_chat(
    connect: Connect, broker: BrokerServer
) -> None:
    client = await connect()
    audio = _wav()
    result = await client.query("", "speech", audio=_b64(audio))
    assert result["type"] == "query_result", result
    assert result["result_type"] == "text"
    # the chat worker answered the transcription
    assert "[demo transcription]" in result["result"]
    assert result["worker"] == "ref-chat"
    [row] = _rows(broker, client.guid)
    assert (row["query_type"], row["status"], row["worker"]) == ("speech", "done", "ref-chat")
    assert row["cost"] > 0


async def test_speech_model_type_answers_with_audio(connect: Connect, broker: BrokerServer) -> None:
    client: WSClient = await connect()
    result = await client.query("say this aloud", model_type="speech")
    assert result["type"] == "query_result", result
    assert result["result_type"] == "audio"
    _assert_wav(result["result"])
    [row] = _rows(broker, client.guid)
    assert (row["status"], row["result_type"]) == ("done", "audio")


async def test_audio_that_is_not_audio_is_a_clear_error(
    connect: Connect, broker: BrokerServer
) -> None:
    client = await connect()
    junk = _b64(b"this is plain text, not a recording" * 4)
    # more rejections than ``circuit_failures``: the user's bad input must not shut
    # the speech worker off for everyone
    for _ in range(broker.settings.workers.circuit_failures + 1):
        await client.send({"type": "speech_to_text", "audio": junk})
        error = await client.expect_any(("transcription_result", "error"))
        assert error["type"] == "error"
        assert "worker ref-speech rejected the query (400 Bad Request)" in error["message"]
        assert "not audio" not in error["message"]  # the worker's text is not reflected

    failed = await client.query("", "speech", audio=junk)
    assert failed["type"] == "error"
    assert "rejected the query (400 Bad Request)" in failed["message"]
    [row] = _rows(broker, client.guid)
    assert (row["status"], row["cost"]) == ("failed", 0)

    await client.send({"type": "speech_to_text", "audio": "%%% not base64 %%%"})
    error = await client.expect("error")
    assert error["message"] == "Invalid audio data: not valid base64"

    state = broker.registry.get("ref-speech")
    assert state is not None
    assert state.worker.health_score == 100
    assert state.circuit(time.monotonic()) == "closed"
    await client.send({"type": "speech_to_text", "audio": _b64(_wav())})
    assert (await client.expect_any(("transcription_result", "error")))["type"] == (
        "transcription_result"
    )


async def test_without_a_speech_worker_errors_come_at_once(
    broker_factory: BrokerFactory, ref_workers: dict[str, str]
) -> None:
    server = broker_factory(demo_worker_records({"chat": ref_workers["chat"]}))
    client = await WSClient.connect(server.ws_url)
    try:
        await client.connect_sequence()
        started = time.monotonic()
        await client.send({"type": "text_to_speech", "text": "hello"})
        assert (await client.expect("error"))["message"] == "No speech worker is available"
        await client.send({"type": "speech_to_text", "audio": _b64(_wav())})
        assert (await client.expect("error"))["message"] == "No speech worker is available"
        refused = await client.query("", "speech", audio=_b64(_wav()))
        assert refused == {"type": "error", "message": "No speech worker is available"}
        refused = await client.query("speak", model_type="speech")
        assert refused == {"type": "error", "message": "No speech worker is available"}
        assert time.monotonic() - started < 2.0
        assert _rows(server, client.guid) == []
    finally:
        await client.close()
