"""Every backend maps every kind of misbehaviour to the same error types."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import pytest
from tests.fakes import FakeServer

from rentahal.backends import HttpClient, get_backend
from rentahal.errors import (
    WorkerBadResponse,
    WorkerError,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from rentahal.models import AIWorker, Query


@dataclass(frozen=True)
class Case:
    protocol: str
    fake: str
    query_type: str
    worker_type: str


CASES = [
    Case("a1111", "fake_a1111", "imagine", "imagine"),
    Case("ollama", "fake_ollama", "chat", "chat"),
    Case("openai", "fake_openai", "chat", "chat"),
    Case("openai", "fake_openai", "imagine", "imagine"),
    Case("claude", "fake_claude", "chat", "chat"),
    Case("huggingface", "fake_huggingface", "chat", "chat"),
]
IDS = [f"{c.protocol}-{c.query_type}" for c in CASES]

MODES: list[tuple[str, type[WorkerError], int | None]] = [
    ("html", WorkerBadResponse, None),
    ("truncated", WorkerBadResponse, None),
    ("missing", WorkerBadResponse, None),
    ("400", WorkerRejected, 400),
    ("401", WorkerRejected, 401),
    ("429", WorkerRateLimited, 429),
    ("500", WorkerUnavailable, 500),
    ("503", WorkerUnavailable, 503),
]


def _worker(case: Case, address: str) -> AIWorker:
    return AIWorker(
        name=f"fake-{case.protocol}",
        address=address,
        type=case.worker_type,  # type: ignore[arg-type]
        protocol=case.protocol,
        api_key="sk-test",
        models=["some-model"],
    )


def _query(case: Case) -> Query:
    return Query(prompt="a red fox", query_type=case.query_type)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize(("mode", "error", "status"), MODES, ids=[m[0] for m in MODES])
async def test_run_maps_misbehaviour(
    case: Case,
    mode: str,
    error: type[WorkerError],
    status: int | None,
    request: pytest.FixtureRequest,
    client: HttpClient,
) -> None:
    fake: FakeServer = request.getfixturevalue(case.fake)
    fake.state.mode = mode
    worker = _worker(case, fake.address)

    with pytest.raises(error) as caught:
        await get_backend(case.protocol).run(client, worker, _query(case), 5)

    assert type(caught.value) is error
    assert caught.value.worker == worker.name
    assert worker.name in str(caught.value)
    assert caught.value.status == status
    assert len(fake.state.requests) == 1  # no hidden retries inside a backend


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_run_hang_is_a_timeout(
    case: Case, request: pytest.FixtureRequest, client: HttpClient
) -> None:
    fake: FakeServer = request.getfixturevalue(case.fake)
    fake.state.mode = "hang"

    with pytest.raises(WorkerTimeout, match=r"timed out after 0\.3s"):
        await get_backend(case.protocol).run(client, _worker(case, fake.address), _query(case), 0.3)


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_run_connect_refused_is_unavailable(case: Case, client: HttpClient) -> None:
    worker = _worker(case, f"127.0.0.1:{_free_port()}")

    with pytest.raises(WorkerUnavailable, match="unreachable") as caught:
        await get_backend(case.protocol).run(client, worker, _query(case), 5)
    assert caught.value.status is None


PROBED = [c for c in CASES if c.query_type != "imagine" or c.protocol == "a1111"]


@pytest.mark.parametrize("case", PROBED, ids=[c.protocol for c in PROBED])
@pytest.mark.parametrize("mode", ["429", "500", "503", "400"])
async def test_probe_returns_error_status(
    case: Case, mode: str, request: pytest.FixtureRequest, client: HttpClient
) -> None:
    fake: FakeServer = request.getfixturevalue(case.fake)
    fake.state.mode = mode

    status = await get_backend(case.protocol).probe(client, _worker(case, fake.address), 5)

    assert status == int(mode)
    assert fake.state.last.method == "GET"


@pytest.mark.parametrize("case", PROBED, ids=[c.protocol for c in PROBED])
async def test_probe_healthy_is_200_and_never_a_completion(
    case: Case, request: pytest.FixtureRequest, client: HttpClient
) -> None:
    fake: FakeServer = request.getfixturevalue(case.fake)

    status = await get_backend(case.protocol).probe(client, _worker(case, fake.address), 5)

    assert status == 200
    assert [r.method for r in fake.state.requests] == ["GET"]


@pytest.mark.parametrize("case", PROBED, ids=[c.protocol for c in PROBED])
async def test_probe_raises_when_no_answer(
    case: Case, request: pytest.FixtureRequest, client: HttpClient
) -> None:
    fake: FakeServer = request.getfixturevalue(case.fake)
    fake.state.mode = "hang"
    backend = get_backend(case.protocol)

    with pytest.raises(WorkerTimeout):
        await backend.probe(client, _worker(case, fake.address), 0.3)
    with pytest.raises(WorkerUnavailable):
        await backend.probe(client, _worker(case, f"127.0.0.1:{_free_port()}"), 5)


LISTED: list[tuple[str, str, list[str]]] = [
    ("a1111", "fake_a1111", ["v1-5-pruned-emaonly", "sdxl_base"]),
    ("ollama", "fake_ollama", ["llama3:latest", "llava:latest"]),
    ("openai", "fake_openai", ["gpt-4o-mini", "dall-e-2"]),
    ("claude", "fake_claude", ["claude-3-haiku-20240307", "claude-3-5-sonnet-20241022"]),
]


@pytest.mark.parametrize(("protocol", "fake_name", "expected"), LISTED, ids=[x[0] for x in LISTED])
async def test_list_models(
    protocol: str,
    fake_name: str,
    expected: list[str],
    request: pytest.FixtureRequest,
    client: HttpClient,
) -> None:
    fake: FakeServer = request.getfixturevalue(fake_name)
    worker = AIWorker(name="w", address=fake.address, protocol=protocol, api_key="k")

    assert await get_backend(protocol).list_models(client, worker, 5) == expected


@pytest.mark.parametrize(("protocol", "fake_name", "expected"), LISTED, ids=[x[0] for x in LISTED])
@pytest.mark.parametrize("mode", ["html", "missing", "500"])
async def test_list_models_errors(
    protocol: str,
    fake_name: str,
    expected: list[str],
    mode: str,
    request: pytest.FixtureRequest,
    client: HttpClient,
) -> None:
    fake: FakeServer = request.getfixturevalue(fake_name)
    fake.state.mode = mode
    worker = AIWorker(name="w", address=fake.address, protocol=protocol, api_key="k")
    error: Any = WorkerUnavailable if mode == "500" else WorkerBadResponse

    with pytest.raises(error):
        await get_backend(protocol).list_models(client, worker, 5)
