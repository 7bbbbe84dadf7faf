"""What a worker sends back is bounded and not trusted; where a worker may live is checked."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rentahal.models import AIWorker
from tests.support.bad_worker import BadWorker
from tests.support.broker_process import BrokerProcess
from tests.support.client import WSClient
from tests.support.servers import ThreadServer

MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(120)


@contextlib.contextmanager
def serve(worker: BadWorker) -> Iterator[ThreadServer]:
    """The misbehaving worker on a free loopback port."""
    server = ThreadServer(worker.app(), timeout_graceful_shutdown=1)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _record(name: str, server: ThreadServer) -> AIWorker:
    return AIWorker(name=name, address=f"127.0.0.1:{server.port}", type="chat")


class PeakRss:
    """The highest RSS of a broker process while the block runs (sampled every 10 ms)."""

    def __init__(self, proc: BrokerProcess) -> None:
        self.proc = proc
        self.before = proc.rss_bytes()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_100_mib_answer_is_an_error_with_bounded_memory(tmp_path: Path) -> None:
    huge = BadWorker(f"huge:{100 * MIB}")
    cap = 8 * MIB
    with serve(huge) as worker_server:
        env = {"WORKERS__MAX_ANSWER_BYTES": str(cap), "WORKERS__MAX_ATTEMPTS": "1"}
        with BrokerProcess(tmp_path, [_record("huge", worker_server)], env) as proc:
            client = await WSClient.connect(proc.ws_url)
            try:
                await client.connect_sequence()
                with PeakRss(proc) as rss:
                    error = await client.query("tell me everything", timeout_s=60)
                print(
                    f"RSS {rss.before / MIB:.1f} -> peak {rss.peak / MIB:.1f} MiB",
                    f"(cap {cap // MIB} MiB)",
                )
            finally:
                await client.close()
    assert error["type"] == "error", error
    assert "answer too large" in error["message"]
    assert rss.peak - rss.before < cap + 24 * MIB, (
        f"RSS grew {(rss.peak - rss.before) / MIB:.1f} MiB"
    )


async def test_redirect_to_another_port_is_not_followed(broker_factory, open_client) -> None:
    elsewhere = BadWorker()
    with serve(elsewhere) as other:
        sly = BadWorker(f"redirect:http://127.0.0.1:{other.port}/predict")
        with serve(sly) as sly_server:
            server = broker_factory([_record("sly", sly_server)], workers={"max_attempts": 1})
            client = await open_client(server)
            error = await client.query("my private prompt")
    assert error["type"] == "error"
    assert "redirected to another address" in error["message"]
    assert (sly.calls, elsewhere.calls) == (1, 0)


REFUSED = [
    "169.254.169.254:80",
    "169.254.169.254",
    "http://169.254.169.254/latest/meta-data",
    "[fe80::1]:8000",
    "[::ffff:169.254.169.254]:80",
    "[fd00:ec2::254]:80",
    "100.100.100.200:80",
    "user@10.0.0.5:8000",
    "10.0.0.5:8000/predict?x=1",
]
ALLOWED = ["127.0.0.1:9", "10.0.0.5:8000", "192.168.1.20:11434", "[::1]:9", "localhost:9"]


async def test_worker_networks_for_add_worker(connect) -> None:
    sysop = await connect()
    for address in REFUSED:
        worker = {"name": "meta", "address": address, "type": "chat"}
        await sysop.send({"type": "add_worker", "worker": worker})
        error = await sysop.expect("error")
        assert "Worker address" in error["message"], (address, error)
    for i, address in enumerate(ALLOWED):
        worker = {"name": f"ok{i}", "address": address, "type": "chat"}
        await sysop.send({"type": "add_worker", "worker": worker})
        update = await sysop.expect("worker_update")
        assert any(w["name"] == f"ok{i}" for w in update["workers"]), address
    names = {w.name for w in await _workers(connect)}
    assert "meta" not in names


async def _workers(connect) -> list[AIWorker]:
    client = await connect(read_sequence=False)
    sequence = await client.connect_sequence()
    update = next(m for m in sequence if m["type"] == "worker_update")
    return [AIWorker.model_validate(w) for w in update["workers"]]


async def test_worker_networks_setting_and_admin_route(broker_factory) -> None:
    server = broker_factory(security={"admin_token": "t0ken", "worker_networks": "10.0.0.0/8"})
    headers = {"X-Admin-Token": "t0ken"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
        realms = (await http.get("/api/admin/realms")).json()
        realm = realms["realms"][0]["name"]
        for route in (f"/api/admin/realms/{realm}/workers", "/api/admin/workers"):
            for address, status in (
                ("127.0.0.1:9", 422),
                ("169.254.169.254:80", 422),
                ("10.1.2.3:8000", 201),
            ):
                name = f"w-{status}-{address[:3]}"
                answer = await http.post(
                    route, json={"name": name, "address": address, "type": "chat"}
                )
                assert answer.status_code == status, (route, address, answer.text)
                if status == 422:
                    assert "Worker address" in answer.json()["detail"]
