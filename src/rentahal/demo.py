"""``rentahal demo``: demo worker processes plus their registration with the broker."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from rentahal.lifecycle import die_with_parent
from rentahal.models import AIWorker

# name, worker type, protocol the broker speaks to it, models it serves
DEMO_WORKERS: tuple[tuple[str, str, str, list[str]], ...] = (
    ("demo-chat", "chat", "predict", ["demo-chat"]),
    ("demo-vision", "vision", "predict", ["demo-vision"]),
    ("demo-imagine", "imagine", "a1111", ["demo-imagine"]),
    ("demo-speech", "speech", "openai", ["demo-speech"]),
)
# Four Python processes start at once; on a small, busy machine that takes a while.
STARTUP_TIMEOUT_S = 90.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """A reference worker running as a child process."""

    worker: AIWorker
    process: subprocess.Popen[bytes]


def worker_cmd(port: int, *, latency_ms: float = 0.0, max_concurrency: int = 0) -> list[str]:
    """The command line of a reference worker on ``127.0.0.1:port``."""
    return [
        sys.executable,
        "-m",
        "rentahal.worker",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        "--max-concurrency",
        str(max_concurrency),
        "--log-level",
        "warning",
    ]


def start_worker_process(
    port: int,
    *,
    latency_ms: float = 0.0,
    max_concurrency: int = 0,
    quiet: bool = True,
    tied: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``python -m rentahal.worker`` on ``127.0.0.1:port``.

    ``tied``: the worker gets SIGTERM when this process dies, even by SIGKILL
    (see :func:`rentahal.lifecycle.die_with_parent`; spawn from a long-lived thread).
    """
    out = subprocess.DEVNULL if quiet else None
    cmd = worker_cmd(port, latency_ms=latency_ms, max_concurrency=max_concurrency)
    preexec = die_with_parent() if tied else None
    return subprocess.Popen(
        cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, preexec_fn=preexec
    )


def wait_healthy(address: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Block until ``http://address/health`` answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker on {address} exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{address}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"worker on {address} did not become healthy in {timeout_s:g}s")


@contextlib.contextmanager
def demo_workers(latency_ms: float = 0.0, max_concurrency: int = 4) -> Iterator[list[AIWorker]]:
    """Run one demo worker per query type; yield their records; stop them after.

    The workers are tied to this process: they stop when it dies, however it dies.
    """
    procs: list[WorkerProcess] = []
    try:
        for name, wtype, protocol, models in DEMO_WORKERS:
            port = free_port()
            proc = start_worker_process(port, latency_ms=latency_ms, max_concurrency=0, tied=True)
            worker = AIWorker(
                name=name,
                address=f"127.0.0.1:{port}",
                type=wtype,  # type: ignore[arg-type]
                protocol=protocol,
                max_concurrency=max_concurrency,
                models=models,
            )
            procs.append(WorkerProcess(worker, proc))
        for wp in procs:
            wait_healthy(wp.worker.address, wp.process, timeout_s=STARTUP_TIMEOUT_S)
        yield [wp.worker for wp in procs]
    finally:
        for wp in procs:
            if wp.process.poll() is None:
                wp.process.terminate()
        for wp in procs:
            try:
                wp.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                wp.process.kill()
