"""HealthRules: the original's scoring of probes, blacklisting, imagine exemption, readmission."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rentahal.backends.health import HealthMonitor, HealthRules, probe_worker
from rentahal.config import WorkerSettingsSection
from rentahal.models import AIWorker
from tests.fakes import FakeServer, FakeState


def _worker(wtype: str = "chat", **kw: Any) -> AIWorker:
    return AIWorker(name=f"w-{wtype}", address="127.0.0.1:1", type=wtype, **kw)  # type: ignore[arg-type]


RULES = HealthRules()


def test_defaults_are_the_originals_and_follow_settings() -> None:
    assert RULES == HealthRules.from_settings(WorkerSettingsSection())
    assert (RULES.success_delta, RULES.failure_delta, RULES.error_delta) == (10, 10, 5)
    assert RULES.readmit_health == 50 and RULES.no_blacklist_imagine
    custom = HealthRules.from_settings(
        WorkerSettingsSection(
            health_success_delta=1,
            health_failure_delta=2,
            health_error_delta=3,
            readmit_health=4,
            no_blacklist_imagine=False,
        )
    )
    assert custom == HealthRules(1, 2, 3, 4, False)


def test_200_adds_ten_up_to_100_and_marks_active() -> None:
    worker = _worker(health_score=85, last_active="2000-01-01T00:00:00+00:00")
    assert RULES.apply(worker, 200)
    assert worker.health_score == 95
    assert worker.last_active > "2000-01-01"
    assert RULES.apply(worker, 200)
    assert worker.health_score == 100
    assert not RULES.apply(worker, 200)  # already full: nothing changed
    assert worker.health_score == 100


@pytest.mark.parametrize("status", [500, 503, 404, 401, 302])
def test_non_200_subtracts_ten(status: int) -> None:
    worker = _worker()
    assert RULES.apply(worker, status)
    assert worker.health_score == 90
    assert not worker.is_blacklisted


def test_no_answer_subtracts_five() -> None:
    worker = _worker()
    assert RULES.apply(worker, None)
    assert worker.health_score == 95


def test_blacklisted_at_zero_never_below() -> None:
    worker = _worker(health_score=15)
    RULES.apply(worker, 503)
    assert worker.health_score == 5 and not worker.is_blacklisted
    RULES.apply(worker, 503)
    assert worker.health_score == 0 and worker.is_blacklisted
    assert not RULES.apply(worker, None)  # stays at 0, blacklisted: no change
    assert worker.health_score == 0


def test_no_answer_also_blacklists_at_zero() -> None:
    worker = _worker(health_score=5)
    RULES.apply(worker, None)
    assert worker.is_blacklisted


def test_imagine_is_exempt_from_blacklisting_by_default() -> None:
    worker = _worker("imagine", health_score=10)
    RULES.apply(worker, 500)
    assert worker.health_score == 0 and not worker.is_blacklisted
    RULES.apply(worker, 500)
    assert not worker.is_blacklisted
    # it climbs back normally, not through readmission
    RULES.apply(worker, 200)
    assert worker.health_score == 10


def test_imagine_is_blacklisted_when_the_exemption_is_off() -> None:
    rules = HealthRules(no_blacklist_imagine=False)
    worker = _worker("imagine", health_score=10)
    rules.apply(worker, 500)
    assert worker.is_blacklisted


@pytest.mark.parametrize("wtype", ["chat", "vision", "speech"])
def test_other_types_are_never_exempt(wtype: str) -> None:
    worker = _worker(wtype, health_score=10)
    RULES.apply(worker, 500)
    assert worker.is_blacklisted


def test_blacklisted_worker_answering_200_is_readmitted_at_50() -> None:
    worker = _worker(health_score=0, is_blacklisted=True)
    assert RULES.apply(worker, 200)
    assert worker.health_score == 50 and not worker.is_blacklisted
    RULES.apply(worker, 200)
    assert worker.health_score == 60


def test_readmission_uses_the_configured_health() -> None:
    worker = _worker(health_score=0, is_blacklisted=True)
    HealthRules(readmit_health=30).apply(worker, 200)
    assert worker.health_score == 30


def test_blacklisted_worker_failing_stays_blacklisted() -> None:
    worker = _worker(health_score=0, is_blacklisted=True)
    RULES.apply(worker, 503)
    assert worker.is_blacklisted and worker.health_score == 0


def test_lower_is_the_passive_path() -> None:
    worker = _worker(health_score=7)
    RULES.lower(worker, 5)
    assert worker.health_score == 2 and not worker.is_blacklisted
    RULES.lower(worker, 5)
    assert worker.health_score == 0 and worker.is_blacklisted


# --- probing --------------------------------------------------------------------------------


def _health_app(status: int) -> Callable[[FakeState], Starlette]:
    """A worker whose ``GET /health`` always answers ``status``."""

    def create_app(state: FakeState) -> Starlette:
        async def health(request: Request) -> JSONResponse:
            await state.record(request)
            return JSONResponse({"status": "healthy" if status == 200 else "down"}, status)

        return Starlette(routes=[Route("/health", health)])

    return create_app


@pytest.fixture(scope="module")
def healthy() -> Iterator[FakeServer]:
    server = FakeServer(_health_app(200)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failing() -> Iterator[FakeServer]:
    server = FakeServer(_health_app(503)).start()
    yield server
    server.stop()


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


async def test_probe_statuses_and_no_answer(healthy: FakeServer, failing: FakeServer) -> None:
    async with aiohttp.ClientSession() as client:
        ok = AIWorker(name="ok", address=healthy.address)
        down = AIWorker(name="down", address=failing.address)
        gone = AIWorker(name="gone", address=_free_address())
        assert await probe_worker(client, ok, 1.0) == 200
        assert await probe_worker(client, down, 1.0) == 503
        assert await probe_worker(client, gone, 1.0) is None
    assert healthy.state.last.method == "GET" and healthy.state.last.path == "/health"


async def test_monitor_round_scores_every_worker_and_reports_changes(
    healthy: FakeServer, failing: FakeServer
) -> None:
    workers = [
        AIWorker(name="full", address=healthy.address),
        AIWorker(name="low", address=healthy.address, health_score=40),
        AIWorker(name="down", address=failing.address, health_score=10),
    ]
    reported: list[list[str]] = []

    async def on_change(changed: list[AIWorker]) -> None:
        reported.append([w.name for w in changed])

    async with aiohttp.ClientSession() as client:
        monitor = HealthMonitor(lambda: workers, client, RULES, WorkerSettingsSection(), on_change)
        changed = await monitor.check_all()
    assert sorted(w.name for w in changed) == ["down", "low"]
    assert [w.health_score for w in workers] == [100, 50, 0]
    assert workers[2].is_blacklisted
    # only changes are reported (no worker_update broadcast for a steady round)
    assert [sorted(r) for r in reported] == [["down", "low"]]
