"""Failure handling end to end: retries, bad answers, 4xx, circuits, 429, image timeouts, models.

Each test checks what the client received and what the ledger holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rentahal.demo import start_worker_process, wait_healthy
from rentahal.models import AIWorker
from tests.support.bad_worker import BadWorker
from tests.support.client import Opener, WSClient
from tests.support.servers import BrokerServer, ThreadServer, free_port, reference_worker

BrokerFactory = Callable[..., BrokerServer]


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[ThreadServer]:
    """Run ``app`` on a free loopback port for the block."""
    server = ThreadServer(app, timeout_graceful_shutdown=1)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _worker(name: str, server: ThreadServer, wtype: str = "chat", **kw: Any) -> AIWorker:
    return AIWorker(
        name=name,
        address=f"127.0.0.1:{server.port}",
        type=wtype,  # type: ignore[arg-type]
        **kw,
    )


def _rows(server: BrokerServer, guid: str | None) -> list[dict[str, Any]]:
    assert guid is not None
    return server.call(server.storage.recent_queries(guid, limit=50))  # type: ignore[no-any-return]


def _user(server: BrokerServer, guid: str | None) -> Any:
    assert guid is not None
    return server.call(server.broker.get_user(guid))


def _circuit(server: BrokerServer, name: str) -> str:
    state = server.registry.get(name)
    assert state is not None
    return state.circuit(time.monotonic())


async def _worker_health(sysop: WSClient, name: str) -> dict[str, Any]:
    """The sysop's ``worker_health`` record of ``name`` (what the dashboard shows)."""
    await sysop.send({"type": "get_stats"})
    health = await sysop.expect("worker_health")
    [record] = [w for w in health["data"] if w["name"] == name]
    return record  # type: ignore[no-any-return]


# --- 1. retry on another worker -------------------------------------------------------------


async def test_failed_attempt_is_retried_on_another_worker(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    bad, good = BadWorker("500"), BadWorker()
    with serve(bad.app()) as bad_srv, serve(good.app()) as good_srv:
        # Equal health: the name breaks the tie, so "zz-bad" is tried first.
        server = broker_factory(
            [
                _worker("zz-bad", bad_srv, max_concurrency=2),
                _worker("aa-good", good_srv, max_concurrency=2),
            ]
        )
        client = await open_client(server)
        first = await client.query("first")
        assert first["type"] == "query_result", first
        assert first["worker"] == "aa-good"
        assert first["attempts"] == 2
        assert first["result"] == "ok: first"
        assert bad.calls == 1

        for i in range(4):
            await client.send(
                {"type": "submit_query", "query": {"prompt": f"q{i}", "query_type": "chat"}}
            )
        results = [await client.expect("query_result") for _ in range(4)]
        assert {r["worker"] for r in results} == {"aa-good"}
        # every extra attempt was one call to the bad worker
        assert sum(r["attempts"] - 1 for r in results) == bad.calls - 1
        assert good.calls == 5

        rows = {r["job_id"]: r for r in _rows(server, client.guid)}
        assert len(rows) == 5
        total = 0.0
        for result in [first, *results]:
            row = rows[result["job_id"]]
            assert row["status"] == "done"
            assert row["worker"] == "aa-good"
            assert row["attempts"] == result["attempts"]
            assert row["cost"] == pytest.approx(result["cost"])
            assert row["cost"] > 0
            total += row["cost"]
        user = _user(server, client.guid)
        assert user.query_count == 5  # charged once per query, not per attempt
        assert user.total_cost == pytest.approx(total)


# --- 2. unparseable answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("html", "answered text/html; charset=utf-8 that is not valid JSON"),
        ("truncated", "that is not valid JSON"),
        ("missing", "answer lacks field response"),
    ],
)
async def test_bad_answers_fail_clearly_and_charge_nothing(
    broker_factory: BrokerFactory, open_client: Opener, mode: str, says: str
) -> None:
    bad = BadWorker(mode)
    with serve(bad.app()) as srv:
        server = broker_factory([_worker("lonely", srv)], workers={"circuit_failures": 10})
        client = await open_client(server)
        error = await client.query("hello")
        assert error["type"] == "error"
        assert error["message"].startswith("worker lonely ")
        assert says in error["message"]
        assert error["message"].endswith("(after 3 attempts)")
        assert bad.calls == 3

        [row] = _rows(server, client.guid)
        assert row["status"] == "failed"
        assert row["cost"] == 0
        assert row["attempts"] == 3
        assert row["worker"] == "lonely"
        assert row["error"] == error["message"]
        user = _user(server, client.guid)
        assert (user.query_count, user.total_cost, user.total_query_time) == (0, 0, 0)

        # the same connection keeps working once the worker behaves
        bad.mode = "ok"
        result = await client.query("again")
        assert result["type"] == "query_result"
        assert result["worker"] == "lonely" and result["attempts"] == 1
        assert _user(server, client.guid).query_count == 1


# --- 3. 4xx is not retried ------------------------------------------------------------------


async def test_rejection_is_not_retried(broker_factory: BrokerFactory, open_client: Opener) -> None:
    bad, good = BadWorker("400"), BadWorker()
    with serve(bad.app()) as bad_srv, serve(good.app()) as good_srv:
        server = broker_factory(
            [_worker("zz-strict", bad_srv), _worker("aa-other", good_srv)],
            workers={"circuit_failures": 1},
        )
        client = await open_client(server)
        error = await client.query("a prompt the worker dislikes")
        assert error["type"] == "error"
        assert "worker zz-strict rejected the query (400 Bad Request)" in error["message"]
        assert "bad prompt" not in error["message"]  # the worker's text is not reflected
        assert (bad.calls, good.calls) == (1, 0)
        [row] = _rows(server, client.guid)
        assert (row["status"], row["attempts"], row["cost"]) == ("failed", 1, 0)
        # the query's fault, not the worker's: no health lost, circuit still closed
        state = server.registry.get("zz-strict")
        assert state is not None and state.worker.health_score == 100
        assert _circuit(server, "zz-strict") == "closed"


# --- 4. circuit breaker ---------------------------------------------------------------------


async def test_circuit_opens_skips_then_half_open_trial_closes_it(
    broker_factory: BrokerFactory,
    open_client: Opener,
) -> None:
    flaky = BadWorker("500")
    with serve(flaky.app()) as srv:
        server = broker_factory(
            [_worker("flaky", srv, max_concurrency=2)],
            workers={"circuit_failures": 2, "circuit_open_s": 1},
        )
        sysop = await open_client(server)
        error = await sysop.query("one")
        opened_at = time.monotonic()
        # two failures open the circuit; the third attempt is not waited for
        assert error["type"] == "error"
        assert (
            error["message"]
            == "worker flaky answered 500 (Internal Server Error) (after 2 attempts)"
        )
        assert flaky.calls == 2
        assert _circuit(server, "flaky") == "open"
        assert (await _worker_health(sysop, "flaky"))["circuit"] == "open"

        # While open the worker is skipped: queries fail at once, naming it; no calls.
        flaky.mode = "sleep:0.3"
        flaky.max_in_flight = 0
        started = time.monotonic()
        refused = await sysop.query("refused")
        assert time.monotonic() - started < 0.5
        assert refused["type"] == "error"
        assert refused["message"].startswith("The chat worker flaky is not answering")
        assert refused["message"].endswith("tried again in 1 s")
        assert flaky.calls == 2

        # After circuit_open_s the next queries are let through: one trial at a time.
        await asyncio.sleep(max(0.0, opened_at + 1.05 - time.monotonic()))
        for prompt in ("two", "three"):
            await sysop.send(
                {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}
            )
        results = [await sysop.expect("query_result") for _ in range(2)]
        assert sorted(r["result"] for r in results) == ["ok: three", "ok: two"]
        assert all(r["attempts"] == 1 for r in results)
        # one half-open trial at a time, although the worker has two slots
        assert flaky.max_in_flight == 1
        assert flaky.calls == 4
        assert _circuit(server, "flaky") == "closed"
        assert (await _worker_health(sysop, "flaky"))["circuit"] == "closed"

        rows = _rows(server, sysop.guid)
        assert sorted(r["status"] for r in rows) == ["done", "done", "failed"]


async def test_failed_half_open_trial_reopens_the_circuit(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    flaky = BadWorker("500")
    with serve(flaky.app()) as srv:
        server = broker_factory(
            [_worker("flaky", srv)],
            workers={"circuit_failures": 2, "circuit_open_s": 0.5},
        )
        client = await open_client(server)
        assert (await client.query("one"))["type"] == "error"
        assert flaky.calls == 2
        await asyncio.sleep(0.6)  # the circuit is half open: the next query is the trial
        error = await client.query("trial")
        # one trial call, then the circuit is open again and no retry is attempted
        assert error["type"] == "error"
        assert error["message"] == "worker flaky answered 500 (Internal Server Error)"
        assert flaky.calls == 3
        assert _circuit(server, "flaky") == "open"
        flaky.mode = "ok"
        await asyncio.sleep(0.6)
        result = await client.query("later")
        assert result["type"] == "query_result" and result["worker"] == "flaky"
        assert flaky.calls == 4
        assert _circuit(server, "flaky") == "closed"


@contextlib.contextmanager
def _worker_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The reference worker as a process on ``port``, stopped after the block."""
    proc = start_worker_process(port)
    try:
        wait_healthy(f"127.0.0.1:{port}", proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _until_circuit(server: BrokerServer, name: str, state: str, timeout_s: float) -> float:
    """Seconds until ``name``'s circuit is in ``state`` (fails after ``timeout_s``)."""
    started = time.monotonic()
    while _circuit(server, name) != state:
        assert time.monotonic() - started < timeout_s, f"circuit of {name} not {state}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_stopped_worker_fails_fast_and_a_probe_closes_its_circuit(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = broker_factory(
        [AIWorker(name="solo", address=address, type="chat")],
        workers={"circuit_failures": 1, "circuit_open_s": 30, "circuit_probe_interval_s": 0.2},
    )
    client = await open_client(server)
    with _worker_process(port):
        assert (await client.query("warm up"))["type"] == "query_result"
    # The worker process is gone: the first query fails and opens the circuit.
    failed = await client.query("while down", timeout_s=10)
    assert failed["type"] == "error" and "solo" in failed["message"]
    assert _circuit(server, "solo") == "open"
    # The next one is refused at once, naming the worker and when it is tried again.
    started = time.monotonic()
    refused = await client.query("still down", timeout_s=5)
    assert time.monotonic() - started < 1.0
    assert refused["type"] == "error"
    match = re.fullmatch(
        r"The chat worker solo is not answering \(circuit open\); "
        r"it will be tried again in (\d+) s",
        refused["message"],
    )
    assert match is not None, refused
    assert 25 <= int(match.group(1)) <= 30
    # Back on its port: a probe closes the circuit within a few probe intervals.
    with _worker_process(port):
        assert await _until_circuit(server, "solo", "closed", timeout_s=3.0) < 3.0
        started = time.monotonic()
        answer = await client.query("back again", timeout_s=5)
        assert answer["type"] == "query_result" and answer["worker"] == "solo"
        assert time.monotonic() - started < 2.0
    assert [r["status"] for r in reversed(_rows(server, client.guid))] == [
        "done",
        "failed",
        "done",
    ]


async def test_open_circuit_sends_queries_to_another_worker_at_once(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    down_port = free_port()
    with reference_worker() as up:
        server = broker_factory(
            [
                AIWorker(name="down", address=f"127.0.0.1:{down_port}", type="chat"),
                AIWorker(name="up", address=up, type="chat", health_score=50),
            ],
            workers={"circuit_failures": 1, "circuit_open_s": 30},
        )
        client = await open_client(server)
        first = await client.query("one")  # tried on "down" (healthier), retried on "up"
        assert (first["type"], first["worker"], first["attempts"]) == ("query_result", "up", 2)
        assert _circuit(server, "down") == "open"
        started = time.monotonic()
        second = await client.query("two")
        assert time.monotonic() - started < 1.0
        assert (second["worker"], second["attempts"]) == ("up", 1)


async def test_queued_queries_fail_at_once_when_the_circuit_opens(
    broker_factory: BrokerFactory, open_client: Opener
) -> None:
    port = free_port()
    server = broker_factory(
        [AIWorker(name="slow", address=f"127.0.0.1:{port}", type="chat", max_concurrency=1)],
        workers={"circuit_failures": 1, "circuit_open_s": 30, "max_attempts": 1},
    )
    client = await open_client(server)
    proc = start_worker_process(port, latency_ms=1000)
    try:
        wait_healthy(f"127.0.0.1:{port}", proc)
        for prompt in ("first", "second", "third"):
            await client.send(
                {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}
            )
            await client.expect("query_queued")
        await asyncio.sleep(0.3)  # "first" runs, the others wait for the only slot
        proc.kill()  # the running call breaks: the circuit opens
        started = time.monotonic()
        errors = [await client.expect("error", timeout_s=5) for _ in range(3)]
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    messages = sorted(e["message"] for e in errors)
    assert messages[-1].startswith("worker slow unreachable")
    assert all(m.startswith("The chat worker slow is not answering") for m in messages[:2])
    assert sorted(r["status"] for r in _rows(server, client.guid)) == ["failed"] * 3


# --- 5. 429 cool-down -----------------------------------------------------------------------


async def test_rate_limited_worker_cools_down_without_blacklisting(
    broker_factory: BrokerFactory,
    open_client: Opener,
) -> None:
    limited, good = BadWorker("429"), BadWorker()
    with serve(limited.app()) as lim_srv, serve(good.app()) as good_srv:
        server = broker_factory(
            [_worker("zz-limited", lim_srv), _worker("aa-good", good_srv)],
            workers={"rate_limit_cooldown_s": 1, "circuit_failures": 1},
        )
        sysop = await open_client(server)
        first = await sysop.query("first")
        assert first["type"] == "query_result"
        assert (first["worker"], first["attempts"]) == ("aa-good", 2)
        assert limited.calls == 1
        cooled_at = time.monotonic()

        for i in range(3):
            result = await sysop.query(f"during {i}")
            assert (result["worker"], result["attempts"]) == ("aa-good", 1)
        assert limited.calls == 1
        record = await _worker_health(sysop, "zz-limited")
        assert record["is_blacklisted"] is False
        assert record["health_score"] == 100
        assert record["circuit"] == "closed"

        # after the cool-down it is first choice again (still the healthiest by name)
        limited.mode = "ok"
        await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - cooled_at)))
        after = await sysop.query("after")
        assert (after["worker"], after["attempts"]) == ("zz-limited", 1)

        rows = _rows(server, sysop.guid)
        assert [r["status"] for r in rows] == ["done"] * 5
        assert rows[-1]["attempts"] == 2
        assert _user(server, sysop.guid).query_count == 5


# --- 6. image timeouts ----------------------------------------------------------------------


class HangingA1111:
    """An A1111-shaped server whose txt2img never answers in time."""

    def __init__(self) -> None:
        self.calls = 0

    def app(self) -> Starlette:
        async def txt2img(request: Request) -> Response:
            self.calls += 1
            await request.body()
            await asyncio.sleep(30)
            return JSONResponse({"images": []})

        async def options(_request: Request) -> Response:
            return JSONResponse({})

        return Starlette(
            routes=[
                Route("/sdapi/v1/txt2img", txt2img, methods=["POST"]),
                Route("/sdapi/v1/options", options),
            ]
        )


@pytest.mark.parametrize(("retry", "calls"), [(False, 1), (True, 2)])
async def test_timed_out_image_is_not_resubmitted_unless_configured(
    broker_factory: BrokerFactory, open_client: Opener, retry: bool, calls: int
) -> None:
    sd = HangingA1111()
    with serve(sd.app()) as srv:
        server = broker_factory(
            [_worker("painter", srv, "imagine", protocol="a1111")],
            workers={"retry_image_on_timeout": retry, "max_attempts": 2},
            performance={"imagine_timeout": 0.5},
        )
        client = await open_client(server)
        error = await client.query("a cat", "imagine")
        assert error["type"] == "error"
        assert error["message"].startswith("worker painter timed out after 0.5s")
        assert sd.calls == calls
        assert error["message"].endswith("(after 2 attempts)") == retry
        [row] = _rows(server, client.guid)
        assert (row["status"], row["attempts"], row["cost"]) == ("failed", calls, 0)
        # imagine workers are exempt from blacklisting
        state = server.registry.get("painter")
        assert state is not None and not state.worker.is_blacklisted


# --- 8. model_name --------------------------------------------------------------------------


async def test_model_name_selects_the_worker_that_serves_it(
    broker_factory: BrokerFactory,
    open_client: Opener,
) -> None:
    llama, mistral = BadWorker(), BadWorker()
    with serve(llama.app()) as l_srv, serve(mistral.app()) as m_srv:
        server = broker_factory(
            [
                _worker("llama-box", l_srv, models=["llama3"]),
                _worker("mistral-box", m_srv, models=["mistral", "mixtral"]),
            ]
        )
        client = await open_client(server)
        for model, worker in [
            ("mixtral", "mistral-box"),
            ("llama3", "llama-box"),
            ("mistral", "mistral-box"),
        ]:
            result = await client.query("hi", model_name=model)
            assert result["type"] == "query_result", result
            assert result["worker"] == worker
        assert (llama.calls, mistral.calls) == (1, 2)

        # A model no worker lists is only a preference: any chat worker answers it.
        started = time.monotonic()
        anywhere = await client.query("hi", model_name="gpt-9")
        assert time.monotonic() - started < 1.0
        assert anywhere["type"] == "query_result", anywhere
        assert llama.calls + mistral.calls == 4
        # The original client sends worker names (maybe stale) as model_name.
        named = await client.query("hi", model_name="llama-box")
        assert named["worker"] == "llama-box"
        stale = await client.query("hi", model_name="default_worker")
        assert stale["type"] == "query_result", stale
        rows = _rows(server, client.guid)
        assert [(r["model_name"], r["worker"]) for r in reversed(rows)] == [
            ("mixtral", "mistral-box"),
            ("llama3", "llama-box"),
            ("mistral", "mistral-box"),
            ("gpt-9", anywhere["worker"]),
            ("llama-box", "llama-box"),
            ("default_worker", stale["worker"]),
        ]
