"""``rentahal demo``, ``serve`` and ``worker`` as real processes: stopped by signals, no orphans.

Each test starts the command the way a user, systemd or ``docker stop`` would, sends
the signal, and checks that the process exits 0 and that no child of it is left
running or holding a port, also when the parent itself is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(180)

START_TIMEOUT_S = 100.0  # five Python processes on a busy machine
STOP_TIMEOUT_S = 20.0
DEMO_WORKERS = 4


def _env() -> dict[str, str]:
    """Our environment without the user's RENTAHAL_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RENTAHAL_")}


def _rentahal(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    with (cwd / "stderr.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from rentahal.cli import app; app()", *args],
            cwd=cwd,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _wait_http(process: subprocess.Popen[bytes], url: str, cwd: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (cwd / "stderr.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"exited with {process.returncode} while starting:\n{log}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {START_TIMEOUT_S:g}s")


def _gone(pid: int) -> bool:
    """No such process, or only a zombie (it holds no port, nothing to stop)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    """The pids still alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if not _gone(pid)]
        if alive:
            time.sleep(0.1)
    return alive


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _listening_ports(pid: int) -> list[int]:
    return [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]


class Demo:
    """A running ``rentahal demo``: the parent, its worker processes and their ports."""

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.process = _rentahal("demo", "--port", str(self.port), cwd=cwd)
        self.worker_pids: list[int] = []
        self.worker_ports: list[int] = []

    def wait_ready(self) -> None:
        """Wait for the broker; note the workers' pids and ports."""
        _wait_http(self.process, f"http://127.0.0.1:{self.port}/healthz", self.cwd)
        self.worker_pids = [w.pid for w in psutil.Process(self.process.pid).children()]
        self.worker_ports = [p for pid in self.worker_pids for p in _listening_ports(pid)]

    def cleanup(self) -> None:
        """Kill whatever a failed test left behind (by pid)."""
        for pid in [self.process.pid, *self.worker_pids]:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """``rentahal demo --port <free>`` in a temp dir (its SQLite file and realms.yml)."""
    started = Demo(tmp_path)
    try:
        started.wait_ready()
        assert len(started.worker_pids) == DEMO_WORKERS, started.worker_pids
        assert len(started.worker_ports) == DEMO_WORKERS
        for port in started.worker_ports:
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        yield started
    finally:
        started.cleanup()


def test_demo_stops_on_sigterm_with_its_workers(demo: Demo) -> None:
    # SIGINT takes the same path (exit_on_signals); the worker test below sends both.
    demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(timeout=STOP_TIMEOUT_S) == 0
    assert _wait_gone(demo.worker_pids) == []
    assert [p for p in [demo.port, *demo.worker_ports] if not _port_free(p)] == []


def test_demo_workers_die_with_a_killed_parent(demo: Demo) -> None:
    demo.process.kill()  # SIGKILL: the parent runs no cleanup at all
    assert demo.process.wait(timeout=STOP_TIMEOUT_S) == -signal.SIGKILL
    assert _wait_gone(demo.worker_pids) == [], "demo workers outlived their parent"
    assert [p for p in demo.worker_ports if not _port_free(p)] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_exits_0_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    process = _rentahal("worker", "--port", str(port), "--log-level", "warning", cwd=tmp_path)
    try:
        _wait_http(process, f"http://127.0.0.1:{port}/health", tmp_path)
        process.send_signal(sig)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0
        assert _port_free(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_serve_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = _rentahal("serve", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    try:
        _wait_http(process, f"http://127.0.0.1:{port}/healthz", tmp_path)
        assert psutil.Process(process.pid).children() == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT_S) == 0
        assert _port_free(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
