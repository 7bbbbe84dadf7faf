"""The pipelined Redis link: replies in order, errors to their callers, reconnects."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis import exceptions as rexc
from tests.support.redis_server import RedisServer
from tests.support.servers import free_port

from rentahal.bus.link import RedisLink, RedisSubscriber
from rentahal.bus.redis_client import call_retry

pytestmark = pytest.mark.redis


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_server.url, reply_timeout_s=2.0)
    yield link
    await link.close()


async def _client_count(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return len(await client.client_list())
    finally:
        await client.aclose()


async def test_many_callers_share_one_connection_and_get_their_own_replies(
    link: RedisLink, redis_server: RedisServer
) -> None:
    before = await _client_count(redis_server.url)
    replies = await asyncio.gather(*(link.call("ECHO", f"m{i}") for i in range(500)))
    assert replies == [f"m{i}" for i in range(500)]
    assert await _client_count(redis_server.url) == before + 1


async def test_a_command_error_reaches_its_caller_only(link: RedisLink) -> None:
    await link.call("SET", "link:str", "x")
    results = await asyncio.gather(
        link.call("INCR", "link:str"), link.call("GET", "link:str"), return_exceptions=True
    )
    assert isinstance(results[0], rexc.ResponseError)
    assert results[1] == "x"
    assert await link.call("GET", "link:str") == "x"


async def test_replies_are_decoded_like_redis_py_decodes_them(link: RedisLink) -> None:
    await link.call("DEL", "link:h")
    assert await link.call("HSET", "link:h", "a", "é", "b", "2") == 2
    assert await link.call("HMGET", "link:h", "a", "b", "none") == ["é", "2", None]
    assert await link.call("SET", "link:nx", "1", "NX", "EX", 10) in ("OK", True)
    assert await link.call("SET", "link:nx", "1", "NX", "EX", 10) is None


async def test_a_script_redis_lacks_is_loaded_and_run(
    link: RedisLink, redis_server: RedisServer
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        script = client.register_script("return {KEYS[1], ARGV[1], 7}")
        await client.script_flush()
        called = link.register(script)
        assert await called(keys=["k"], args=["v"]) == ["k", "v", 7]
        assert await client.script_exists(script.sha) == [True]
    finally:
        await client.aclose()


async def test_a_lost_connection_fails_what_is_on_its_way_and_the_next_call_reconnects(
    link: RedisLink, redis_server: RedisServer
) -> None:
    assert await link.call("PING") == "PONG"
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        blocked = asyncio.ensure_future(link.call("BLPOP", "link:never", 5))
        await asyncio.sleep(0.2)
        await client.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(rexc.ConnectionError):
            await blocked
    finally:
        await client.aclose()
    assert await link.call("PING") == "PONG"


async def test_a_silent_redis_times_the_connection_out(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url, reply_timeout_s=0.3)
    try:
        with pytest.raises(rexc.TimeoutError):
            await link.call("BLPOP", "link:never", 3)  # no reply within the reply timeout
        assert await link.call("PING") == "PONG"  # a fresh connection
    finally:
        await link.close()


async def test_a_caller_cancelled_before_its_command_left_never_sends_it(
    link: RedisLink,
) -> None:
    await link.call("DEL", "link:cancel")
    task = asyncio.ensure_future(link.call("SET", "link:cancel", "1"))
    await asyncio.sleep(0)  # connected already: queued for this turn's write
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await link.call("GET", "link:cancel") is None


async def test_an_unreachable_redis_is_a_connection_error_and_retry_repeats_it() -> None:
    server = RedisServer()
    link = RedisLink(server.url, connect_timeout_s=0.5)
    with pytest.raises(rexc.ConnectionError):
        await link.call("PING")
    await link.close()
    retrying = RedisLink(server.url, connect_timeout_s=0.5, retry=call_retry())
    call = asyncio.ensure_future(retrying.call("PING"))
    await asyncio.sleep(0.2)
    server.start()
    try:
        assert await call == "PONG"
    finally:
        await retrying.close()
        server.stop()


async def test_password_and_database_of_the_url_are_used() -> None:
    with RedisServer(args=("--requirepass", "s3cret")) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        link = RedisLink(url)
        try:
            await link.call("SET", "link:db", "3")
            other = aioredis.Redis.from_url(url.replace("/3", "/0"), decode_responses=True)
            try:
                assert await other.get("link:db") is None
            finally:
                await other.aclose()
        finally:
            await link.close()
        wrong = RedisLink(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(rexc.ConnectionError, match="refused"):
            await wrong.call("PING")
        await wrong.close()


async def test_a_subscriber_gets_every_message_in_order_without_a_call_each(
    redis_server: RedisServer,
) -> None:
    sub = RedisSubscriber(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await sub.connect()
        await sub.subscribe("link:a", "link:b")
        pipe = client.pipeline(transaction=False)
        for i in range(300):
            pipe.publish("link:a" if i % 2 else "link:b", f"m{i}")
        await pipe.execute()
        got: list[tuple[str, str]] = []
        while len(got) < 300:
            batch = await sub.wait(2.0)
            assert batch, "messages stopped coming"
            got += batch
        assert got == [("link:a" if i % 2 else "link:b", f"m{i}") for i in range(300)]
        assert await sub.wait(0.05) == []
    finally:
        await client.aclose()
        await sub.close()


async def test_a_subscriber_ends_when_its_connection_is_lost(redis_server: RedisServer) -> None:
    sub = RedisSubscriber(redis_server.url)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await sub.connect()
        await sub.subscribe("link:lost")
        await client.client_kill_filter(_type="pubsub")
        with pytest.raises(rexc.ConnectionError):
            for _ in range(50):
                await sub.wait(0.1)
    finally:
        await client.aclose()
        await sub.close()


async def test_a_silent_subscriber_connection_is_found_out(redis_server: RedisServer) -> None:
    sub = RedisSubscriber(redis_server.url, idle_s=0.2, reply_timeout_s=0.5)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await sub.connect()
        await sub.subscribe("link:silent")
        assert await sub.wait(0.3) == []  # idle: pinged, and it answers
        assert await sub.wait(0.3) == []
        await client.execute_command("CLIENT", "PAUSE", 3000, "ALL")
        with pytest.raises(rexc.TimeoutError):
            for _ in range(30):
                await sub.wait(0.2)
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()
        await sub.close()


async def test_a_subscriber_uses_the_url_password() -> None:
    with RedisServer(args=("--requirepass", "s3cret")) as server:
        sub = RedisSubscriber(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        await sub.connect()
        await sub.subscribe("link:pw")
        client = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        await client.publish("link:pw", "hello")
        await client.aclose()
        assert await sub.wait(2.0) == [("link:pw", "hello")]
        await sub.close()
        wrong = RedisSubscriber(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(rexc.ConnectionError, match="refused"):
            await wrong.connect()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_a_rediss_url_speaks_tls_and_checks_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    tls = ("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    with RedisServer(args=(*tls, "--tls-auth-clients", "no")):
        trusted = RedisLink(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
        unchecked = RedisLink(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none")
        stranger = RedisLink(f"rediss://127.0.0.1:{tls_port}/0", connect_timeout_s=2.0)
        try:
            assert await trusted.call("PING") == "PONG"
            assert await unchecked.call("PING") == "PONG"
            with pytest.raises(rexc.ConnectionError):  # not signed by a CA it trusts
                await stranger.call("PING")
            sub = RedisSubscriber(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
            await sub.connect()
            await sub.subscribe("link:tls")
            await trusted.call("PUBLISH", "link:tls", "over tls")
            assert await sub.wait(2.0) == [("link:tls", "over tls")]
            await sub.close()
        finally:
            for link in (trusted, unchecked, stranger):
                await link.close()
