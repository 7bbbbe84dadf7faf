"""Several ``rentahal serve`` processes sharing one Redis and one PostgreSQL, for tests.

A :class:`Cluster` owns every process it starts (redis-server, PostgreSQL,
reference workers, broker nodes) and stops all of them on :meth:`Cluster.close`
(also when a test fails: use it as a context manager or from a fixture with a
finalizer). Each node is a child process with its own node id, port, realms
file and log in the cluster's temp dir; settings reach it as
``RENTAHAL_<SECTION>__<KEY>`` environment variables.

Typical use::

    with Cluster(nodes=3) as cluster:
        cluster.start_worker("w1", latency_ms=100)
        cluster.prepare([cluster.record("w1", max_concurrency=4)])
        client = await WSClient.connect(cluster.node(0).ws_url)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import httpx
import redis

from rentahal.config import BrokerSettings, Settings, load_settings
from rentahal.demo import start_worker_process, wait_healthy
from rentahal.models import AIWorker
from rentahal.storage.database import Storage
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.servers import free_port, seed

NODE_START_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 20.0
# Set (to anything) to keep the temp dir with the node logs after the run.
KEEP_DIR_ENV = "CLUSTER_KEEP_DIR"

# Settings every node gets unless the test overrides them.
_BASE_ENV: dict[str, str] = {
    "RENTAHAL_WORKERS__HEALTH_CHECK_INTERVAL": "3600",
    "RENTAHAL_WORKERS__RETRY_BACKOFF_S": "0.01",
    "RENTAHAL_PERFORMANCE__MAX_CONNECTIONS": "500",
    "RENTAHAL_QUEUE__MAX_QUEUE_SIZE": "1000",
    "RENTAHAL_QUEUE__MAX_QUEUED_PER_USER": "100",
    "RENTAHAL_QUEUE__MAX_QUEUED_PER_ADDRESS": "1000000",
    "RENTAHAL_PERFORMANCE__MAX_CONNECTIONS_PER_ADDRESS": "10000",
    "RENTAHAL_CHUNKING__MAX_UPLOADS_PER_ADDRESS": "10000",
}

# Settings that only some versions of the broker know (an unknown
# RENTAHAL_* variable is a configuration error, so these are passed only when
# the setting exists): a short reclaim time so a killed node's jobs move fast.
_OPTIONAL_BROKER_ENV: dict[str, str] = {
    "claim_idle_s": "3",
    "claim_idle_ms": "3000",
    "drain_timeout_s": "10",
}


def _clean_environ() -> dict[str, str]:
    """This process's environment without the user's own RENTAHAL_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RENTAHAL_")}


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+asyncpg://...`` as a plain ``postgresql://...`` DSN for asyncpg."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


@dataclass
class Node:
    """One broker node process (``process`` is ``None`` while it is down)."""

    index: int
    node_id: str
    port: int
    realms_file: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://{self.address}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:port/ws``."""
        return f"ws://{self.address}/ws"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the node's log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Worker:
    """A reference worker process on a fixed port (so it can come back on the same address)."""

    name: str
    port: int
    latency_ms: float
    max_concurrency: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as the broker's worker record wants it."""
        return f"127.0.0.1:{self.port}"


class Cluster:
    """Redis, PostgreSQL, reference workers and ``nodes`` broker processes on loopback.

    Nothing starts in ``__init__``; :meth:`__enter__` (or :meth:`open`) starts
    Redis and PostgreSQL, :meth:`prepare` gives the nodes a fresh database
    seeded with workers and starts them.
    """

    def __init__(self, nodes: int = 3, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rentahal-cluster-"))
        self.redis = RedisServer()
        self.postgres = PostgresServer()
        self.env = dict(env or {})
        self.round_env: dict[str, str] = {}
        self.database_url = ""
        self.workers: dict[str, Worker] = {}
        self.nodes: list[Node] = []
        for i in range(nodes):
            node_id = f"node{chr(ord('A') + i)}"
            self.nodes.append(
                Node(
                    index=i,
                    node_id=node_id,
                    port=free_port(),
                    realms_file=self.dir / node_id / "realms.yml",
                    log=self.dir / f"{node_id}.log",
                )
            )
        self._databases = 0

    # lifecycle -------------------------------------------------------------

    def open(self) -> Cluster:
        """Start Redis and PostgreSQL."""
        try:
            self.redis.start()
            self.postgres.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every node, worker, PostgreSQL and Redis; remove the temp dir."""
        with contextlib.suppress(Exception):
            self.stop_all(graceful=False)
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                self.stop_worker(worker.name)
        with contextlib.suppress(Exception):
            self.postgres.stop()
        with contextlib.suppress(Exception):
            self.redis.stop()
        if os.environ.get(KEEP_DIR_ENV):
            print(f"cluster logs kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # workers ---------------------------------------------------------------

    def start_worker(self, name: str, *, latency_ms: float = 0.0, max_concurrency: int = 0) -> str:
        """Start (or restart, on its old port) the reference worker ``name``; its address.

        ``max_concurrency`` is the worker's own limit (0 = none); the broker's
        limit is the record's, see :meth:`record`.
        """
        worker = self.workers.get(name)
        if worker is None:
            worker = Worker(name, free_port(), latency_ms, max_concurrency)
            self.workers[name] = worker
        if worker.process is not None and worker.process.poll() is None:
            return worker.address
        worker.process = start_worker_process(
            worker.port, latency_ms=worker.latency_ms, max_concurrency=worker.max_concurrency
        )
        wait_healthy(worker.address, worker.process)
        return worker.address

    def stop_worker(self, name: str) -> None:
        """Stop the reference worker ``name`` (its port stays reserved for a restart)."""
        worker = self.workers[name]
        if worker.process is None:
            return
        if worker.process.poll() is None:
            worker.process.terminate()
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(timeout=10)
        worker.process = None

    def record(self, name: str, *, max_concurrency: int = 4, wtype: str = "chat") -> AIWorker:
        """The broker's record of worker ``name`` (``/predict`` protocol)."""
        return AIWorker(
            name=name,
            address=self.workers[name].address,
            type=wtype,  # type: ignore[arg-type]
            protocol="predict",
            max_concurrency=max_concurrency,
        )

    # database --------------------------------------------------------------

    def prepare(
        self,
        workers: list[AIWorker],
        *,
        sysop_guid: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Stop the nodes, empty Redis, make a fresh database with ``workers``, start the nodes.

        ``sysop_guid`` (when given) is created as a sysop before any node
        starts. ``env`` adds settings for this round (over the cluster's).
        Answers the new database's SQLAlchemy URL.
        """
        self.stop_all(graceful=False)
        self.flush_redis()
        self._databases += 1
        self.database_url = self.postgres.create_database(f"cluster{self._databases}")
        settings = self.settings()
        seed(settings, workers)
        if sysop_guid is not None:
            _run_async(self._make_sysop(settings, sysop_guid))
        self.round_env = dict(env or {})
        self.start_all()
        return self.database_url

    def settings(self) -> Settings:
        """Settings pointing at the current PostgreSQL database (for seeding and checks)."""
        return load_settings(
            None,
            environ={},
            overrides={
                "database": {"database_url": self.database_url},
                "broker": {"redis_url": self.redis.url},
            },
        )

    @staticmethod
    async def _make_sysop(settings: Settings, guid: str) -> None:
        storage = Storage(settings.database.url)
        try:
            await storage.get_or_create_user(guid)
            await storage.set_sysop(guid, True)
        finally:
            await storage.close()

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of ``sql`` on the current database, as dicts (asyncpg, one connection)."""
        conn = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=10)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args, timeout=10)]
        finally:
            await conn.close(timeout=5)

    def flush_redis(self) -> None:
        """Remove every key from Redis (between rounds, with the nodes down)."""
        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    # nodes -----------------------------------------------------------------

    def node(self, i: int) -> Node:
        """Node ``i`` (0-based)."""
        return self.nodes[i]

    def _node_env(self, node: Node) -> dict[str, str]:
        env = _clean_environ()
        env.update(_BASE_ENV)
        known = BrokerSettings.model_fields
        for key, value in _OPTIONAL_BROKER_ENV.items():
            if key in known:
                env[f"RENTAHAL_BROKER__{key.upper()}"] = value
        env["RENTAHAL_BROKER__REALMS_FILE"] = str(node.realms_file)
        env.update(self.env)
        env.update(self.round_env)
        return env

    def _spawn(self, node: Node) -> None:
        if node.running:
            return
        node.realms_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-c",
            "from rentahal.cli import app; app()",
            "serve",
            "--config",
            str(node.realms_file.parent / "config.ini"),  # absent: defaults + env
            "--host",
            "127.0.0.1",
            "--port",
            str(node.port),
            "--redis",
            self.redis.url,
            "--database-url",
            self.database_url,
            "--node-id",
            node.node_id,
        ]
        with node.log.open("ab") as out:
            out.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            node.process = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._node_env(node),
                cwd=node.realms_file.parent,
            )

    def _wait_ready(self, node: Node, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not node.running:
                code = node.process.returncode if node.process else None
                raise RuntimeError(
                    f"{node.node_id} exited with code {code} while starting:\n{node.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{node.http_url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"{node.node_id} did not answer /healthz in {timeout_s:g}s:\n{node.log_tail()}"
        )

    def start(self, i: int) -> Node:
        """Start node ``i`` (same port and node id as before) and wait for ``/healthz``."""
        node = self.nodes[i]
        self._spawn(node)
        self._wait_ready(node)
        return node

    def start_nodes(self, indices: list[int]) -> None:
        """Start the nodes ``indices`` in parallel and wait until all are ready."""
        for i in indices:
            self._spawn(self.nodes[i])
        for i in indices:
            self._wait_ready(self.nodes[i])

    def start_all(self) -> None:
        """Start every node that is down, in parallel, and wait until all are ready."""
        self.start_nodes([node.index for node in self.nodes])

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no shutdown code runs, as after a crash."""
        node = self.nodes[i]
        if node.process is None:
            return
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        node.process = None

    def stop(self, i: int, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM node ``i`` and wait (SIGKILL after ``timeout_s``); its exit code."""
        node = self.nodes[i]
        if node.process is None:
            return None
        if node.process.poll() is None:
            node.process.send_signal(signal.SIGTERM)
        try:
            code = node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            node.process.kill()
            code = node.process.wait(timeout=10)
        node.process = None
        return code

    def stop_nowait(self, i: int) -> subprocess.Popen[bytes] | None:
        """Send SIGTERM to node ``i`` and return at once (the caller waits on the process)."""
        node = self.nodes[i]
        if node.process is None:
            return None
        proc = node.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc

    def forget(self, i: int, timeout_s: float = NODE_STOP_TIMEOUT_S) -> None:
        """Wait for a node stopped with :meth:`stop_nowait` (killing it after ``timeout_s``)."""
        self.stop(i, timeout_s)

    def stop_all(self, graceful: bool = True) -> None:
        """Stop every node: SIGTERM (graceful) or SIGKILL, all at once, then wait."""
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        for node in self.nodes:
            if node.running and node.process is not None:
                node.process.send_signal(sig)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)
            node.process = None

    def pids(self) -> list[int]:
        """Process ids of everything alive that this cluster started."""
        procs: list[subprocess.Popen[Any] | None] = [n.process for n in self.nodes]
        procs += [w.process for w in self.workers.values()]
        procs += [self.redis.process, self.postgres.process]
        return [p.pid for p in procs if p is not None and p.poll() is None]


def _run_async(coro: Any) -> Any:
    """Run ``coro`` to completion in a thread of its own (callers may run a loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def new_guid() -> str:
    """A fresh user GUID."""
    return str(uuid.uuid4())
