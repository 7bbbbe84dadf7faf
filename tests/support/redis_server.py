"""A throwaway ``redis-server`` on a free loopback port, for tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.servers import free_port


def _redis_binary() -> str:
    path = os.environ.get("RENTAHAL_REDIS_SERVER") or shutil.which("redis-server")
    if path is None and Path("/usr/bin/redis-server").exists():
        path = "/usr/bin/redis-server"
    if path is None:
        raise RuntimeError(
            "redis-server not found: install it (apt-get install redis-server) "
            "or set RENTAHAL_REDIS_SERVER to its path"
        )
    return path


def _ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up (with a password)
    except OSError:
        return False


class RedisServer:
    """``redis-server`` without persistence on a free port, in its own temp dir.

    Use as a context manager or call :meth:`start` / :meth:`stop`;
    :meth:`restart` stops and starts it on the same port (all data is lost, as
    after a crash of an unpersisted Redis).
    """

    def __init__(self, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.binary = _redis_binary()
        self.args = args
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rentahal-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:port/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        log = (self.dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                self._kill()
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{output}")
            time.sleep(0.02)

    def _kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop and start again on the same port (empty, as it keeps no data)."""
        self._kill()
        self.start(timeout_s)

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
