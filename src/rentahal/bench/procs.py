"""Start and stop what a scenario needs: reference workers, brokers, redis-server.

Everything runs as child processes on 127.0.0.1 with its files in one temporary
directory; :class:`Cluster` stops all of it (terminate, then kill after a grace
period) however the scenario ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from rentahal.demo import free_port, worker_cmd
from rentahal.models import AIWorker
from rentahal.storage.database import Storage
from rentahal.storage.keys import KeyStore

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
REDIS_SERVER = "/usr/bin/redis-server"


class BenchSetupError(RuntimeError):
    """What a scenario needs could not be started; the message says why."""


def raise_nofile_limit() -> None:
    """Raise this process's open-file limit to its hard limit (many sockets ahead)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_limit() -> int:
    """The soft open-file limit of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def redis_binary() -> str | None:
    """The redis-server program, or None when it is not installed."""
    binary = shutil.which("redis-server") or REDIS_SERVER
    return binary if Path(binary).exists() else None


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """Our environment minus the user's RENTAHAL_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENTAHAL_")}
    env.update(extra)
    return env


@dataclass
class Child:
    """One started process, its log file and the address it serves."""

    name: str
    process: subprocess.Popen[bytes]
    address: str
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the process now."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_http(child: Child, path: str, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{child.address}{path}"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise BenchSetupError(
                f"{child.name} exited with code {child.process.returncode} while starting; "
                f"log {child.log}:\n{child.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchSetupError(f"{child.name} did not answer {url} within {timeout_s:g}s")


@dataclass
class BrokerConfig:
    """Environment overrides for a benchmark broker (see ``rentahal.config``)."""

    max_connections: int = 1000
    max_queue_size: int = 10000
    max_queued_per_user: int = 1000
    redis_url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    # The broker's own limits as shipped (the fields above are not applied).
    defaults: bool = False
    # Another database than the cluster's (see :meth:`Cluster.database`).
    db_path: Path | None = None

    def env(self, db_path: Path, realms_file: Path) -> dict[str, str]:
        """The ``RENTAHAL_*`` environment of a broker with this configuration."""
        env = {
            "RENTAHAL_DATABASE__DATABASE_NAME": str(db_path),
            "RENTAHAL_BROKER__REALMS_FILE": str(realms_file),
            "RENTAHAL_WORKERS__HEALTH_CHECK_INTERVAL": "3600",
        }
        if not self.defaults:
            env |= {
                "RENTAHAL_PERFORMANCE__MAX_CONNECTIONS": str(self.max_connections),
                "RENTAHAL_QUEUE__MAX_QUEUE_SIZE": str(self.max_queue_size),
                "RENTAHAL_QUEUE__MAX_QUEUED_PER_USER": str(self.max_queued_per_user),
                # Every bench client comes from 127.0.0.1: no per-address shares.
                "RENTAHAL_PERFORMANCE__MAX_CONNECTIONS_PER_ADDRESS": str(self.max_connections),
                "RENTAHAL_QUEUE__MAX_QUEUED_PER_ADDRESS": "1000000",
            }
        return env | self.extra_env


class Cluster:
    """A temporary directory with the processes of one scenario; a context manager."""

    def __init__(self, keep_dir: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rentahal-bench-"))
        self.db_path = self.dir / "bench.db"
        self.children: list[Child] = []
        self._keep_dir = keep_dir
        raise_nofile_limit()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()
        if not self._keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, cmd: list[str], address: str, env: dict[str, str]) -> Child:
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(env),
                cwd=self.dir,
                preexec_fn=raise_nofile_limit,  # inherited limits may be low
            )
        child = Child(name, process, address, log)
        self.children.append(child)
        return child

    def start_workers(
        self,
        count: int,
        *,
        latency_ms: float = 0.0,
        max_concurrency: int = 0,
        prefix: str = "w",
        port: int = 0,
    ) -> list[Child]:
        """Start ``count`` reference workers and wait until they are healthy.

        ``port`` (0: free ports) is the first worker's port, the others follow it.
        """
        started = []
        for i in range(count):
            at = port + i if port else free_port()
            cmd = worker_cmd(at, latency_ms=latency_ms, max_concurrency=max_concurrency)
            started.append(self._spawn(f"{prefix}{i}", cmd, f"127.0.0.1:{at}", {}))
        for child in started:
            _wait_http(child, "/health")
        return started

    def start_upstream(self, port: int = 0, name: str = "upstream") -> Child:
        """Start the instant OpenAI-compatible upstream (``rentahal.bench.upstream``)."""
        at = port or free_port()
        cmd = [sys.executable, "-m", "rentahal.bench.upstream", "--port", str(at)]
        child = self._spawn(name, cmd, f"127.0.0.1:{at}", {})
        _wait_http(child, "/health")
        return child

    def database(self, name: str) -> Path:
        """The path of another SQLite database in this cluster's directory (one per broker
        that must not share its ledger with the others)."""
        return self.dir / f"{name}.db"

    def seed(
        self, workers: list[AIWorker], sysop_guid: str | None = None, db_path: Path | None = None
    ) -> str:
        """Create the database with ``workers`` and a sysop user; answers the sysop's GUID."""
        guid = sysop_guid or str(uuid.uuid4())

        async def run() -> None:
            storage = Storage(f"sqlite+aiosqlite:///{db_path or self.db_path}")
            try:
                await storage.migrate()
                for worker in workers:
                    await storage.save_worker(worker)
                user = await storage.get_or_create_user(guid)
                if not user.is_sysop:
                    await storage.set_sysop(guid, True)
            finally:
                await storage.close()

        # In a thread of its own: callers may already run an event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()
        return guid

    def create_api_key(
        self, user_guid: str | None = None, name: str = "bench", db_path: Path | None = None
    ) -> str:
        """Create a load user (unless it exists) with an API key; answers the plaintext key.

        Call it after :meth:`seed` and before the broker starts: the bench database is
        fresh, so the broker's ``/v1`` endpoints have no key to accept otherwise.
        """
        guid = user_guid or str(uuid.uuid4())

        async def run() -> str:
            storage = Storage(f"sqlite+aiosqlite:///{db_path or self.db_path}")
            try:
                await storage.migrate()
                await storage.get_or_create_user(guid)  # the key's user must exist first
                return (await KeyStore(storage).create(guid, name)).key
            finally:
                await storage.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()

    def start_broker(self, config: BrokerConfig, name: str = "broker") -> Child:
        """Start ``rentahal serve`` on a free port with the bench database; wait until ready."""
        port = free_port()
        db_path = config.db_path or self.db_path
        realms = self.dir / ("realms.yml" if db_path == self.db_path else f"{db_path.stem}.yml")
        env = config.env(db_path, realms)
        cmd = [
            sys.executable,
            "-c",
            "from rentahal.cli import app; app()",
            "serve",
            "--config",
            str(self.dir / "config.ini"),  # absent: defaults plus the env overrides
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        if config.redis_url:
            cmd += ["--redis", config.redis_url, "--node-id", name]
        child = self._spawn(name, cmd, f"127.0.0.1:{port}", env)
        _wait_http(child, "/debug/system_status")
        return child

    def start_redis(self) -> Child:
        """Start a throw-away redis-server (no persistence) and wait for PONG."""
        binary = redis_binary()
        if binary is None:
            raise BenchSetupError(
                "redis-server is not installed (Debian: apt install redis-server)"
            )
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        cmd += ["no", "--dir", str(self.dir), "--maxclients", "10000"]
        child = self._spawn("redis", cmd, f"127.0.0.1:{port}", {})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise BenchSetupError(f"redis-server exited:\n{child.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return child
            time.sleep(0.1)
        raise BenchSetupError("redis-server did not answer PING within 15s")

    def stop(self, child: Child) -> None:
        """Terminate one child, killing it after a grace period."""
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=STOP_GRACE_S)
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        """Stop every child, newest first."""
        for child in reversed(list(self.children)):
            if child.process.poll() is None:
                child.process.terminate()
        for child in reversed(list(self.children)):
            try:
                child.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=STOP_GRACE_S)
        self.children.clear()


def chat_worker(
    child: Child, *, max_concurrency: int, name: str | None = None, protocol: str = "predict"
) -> AIWorker:
    """The broker's record of a reference worker serving chat over ``/predict`` (or
    ``protocol="openai"``: its ``/v1/chat/completions``)."""
    return AIWorker(
        name=name or child.name,
        address=child.address,
        type="chat",
        protocol=protocol,
        max_concurrency=max_concurrency,
    )


def imagine_worker(child: Child, *, max_concurrency: int, name: str | None = None) -> AIWorker:
    """The broker's record of a reference worker serving imagine (A1111 protocol)."""
    return AIWorker(
        name=name or child.name,
        address=child.address,
        type="imagine",
        protocol="a1111",
        max_concurrency=max_concurrency,
    )
