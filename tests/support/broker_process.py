"""One ``rentahal serve`` as a child process with SQLite, so a test can measure its memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from rentahal.models import AIWorker
from tests.support.servers import broker_settings, free_port, seed

START_TIMEOUT_S = 60.0


class BrokerProcess:
    """``rentahal serve`` on a free port in ``home``; settings as ``RENTAHAL_*`` variables.

    ``env`` maps ``"SECTION__KEY"`` to values (``{"WORKERS__MAX_ANSWER_BYTES": "1048576"}``).
    Use as a context manager; the process is stopped (by its PID) on exit.
    """

    def __init__(
        self, home: Path, workers: list[AIWorker] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.port = free_port()
        self.log = home / "broker.log"
        self.workers = workers or []
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:port/ws``."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_bytes(self) -> int:
        """The broker process's resident memory now."""
        assert self.process is not None
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def start(self) -> BrokerProcess:
        """Create the database (with ``workers``), start the process, wait for ``/healthz``."""
        self.home.mkdir(parents=True, exist_ok=True)
        settings = broker_settings(self.home)
        seed(settings, self.workers)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENTAHAL_")}
        env.update(
            {
                "RENTAHAL_DATABASE__DATABASE_NAME": settings.database.database_name,
                "RENTAHAL_BROKER__REALMS_FILE": settings.broker.realms_file,
                "RENTAHAL_WORKERS__HEALTH_CHECK_INTERVAL": "3600",
                "RENTAHAL_WORKERS__RETRY_BACKOFF_S": "0.01",
            }
        )
        env.update({f"RENTAHAL_{k}": v for k, v in self.env.items()})
        cmd = [sys.executable, "-c", "from rentahal.cli import app; app()", "serve"]
        cmd += ["--config", str(self.home / "config.ini"), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited at start:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"broker did not answer /healthz:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 20 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
