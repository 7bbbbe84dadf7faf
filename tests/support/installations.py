"""Independent installations for federation tests: one broker process each, own database.

Each installation has its own directory (SQLite file, realms.yml, federation key),
its own port, and optionally its own reference workers. Processes are started
with ``rentahal serve`` and stopped by their PID.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from rentahal.models import AIWorker
from tests.support.cluster import _clean_environ
from tests.support.servers import broker_settings, free_port, seed

ADMIN_TOKEN = "federation-test-admin-token"
JOIN_TOKEN = "shared-join-token-for-tests"
START_TIMEOUT_S = 30.0


@dataclass
class Installation:
    """One RENT-A-HAL installation (a broker process with its own database)."""

    name: str
    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its base URL (also its federation callback URL)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Its WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def database(self) -> Path:
        """Its SQLite file."""
        return self.home / "llm_broker.db"

    def configure(
        self,
        workers: list[AIWorker],
        *,
        bootstrap: list[str] | None = None,
        join_token: str | None = JOIN_TOKEN,
        trust: str = "token",
        federation_id: str | None = None,
        **federation: Any,
    ) -> None:
        """Write realms.yml and seed the workers (before the first start)."""
        self.home.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {
            "discovery": {"bootstrap_nodes": bootstrap or [], "advertise_interval": 0.5},
            "federation": {"trust": trust, "request_timeout_s": 5, **federation},
        }
        if join_token is not None:
            doc["federation"]["join_token"] = join_token
        if federation_id is not None:
            doc["federation_id"] = federation_id
        (self.home / "realms.yml").write_text(yaml.safe_dump(doc))
        seed(broker_settings(self.home), workers)

    def start(self) -> None:
        """Start the broker process and wait for ``/healthz``."""
        env = _clean_environ()
        env.update(
            {
                "RENTAHAL_DATABASE__DATABASE_NAME": str(self.database),
                "RENTAHAL_BROKER__REALMS_FILE": str(self.home / "realms.yml"),
                "RENTAHAL_SECURITY__ADMIN_TOKEN": ADMIN_TOKEN,
                "RENTAHAL_WORKERS__HEALTH_CHECK_INTERVAL": "3600",
                "RENTAHAL_WORKERS__RETRY_BACKOFF_S": "0.01",
            }
        )
        cmd = [
            sys.executable,
            "-c",
            "from rentahal.cli import app; app()",
            "serve",
            "--config",
            str(self.home / "config.ini"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        log = (self.home / "broker.log").open("ab")
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.home,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        path = self.home / "broker.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """A call to its admin API."""
        return httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            headers={"X-Admin-Token": ADMIN_TOKEN},
            timeout=30,
        )

    def peers(self) -> dict[str, dict[str, Any]]:
        """Its peers by federation id."""
        return {
            p["federation_id"]: p
            for p in self.admin("GET", "/api/admin/federation").json()["peers"]
        }

    @property
    def federation_id(self) -> str:
        """Its federation id."""
        return str(
            httpx.get(f"{self.url}/api/federation/identity", timeout=10).json()["federation_id"]
        )

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """Rows of its database (read while it runs)."""
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql, args).fetchall()]
        finally:
            conn.close()


def wait_for(check: Any, timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError):
            value = check()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout_s:g}s")
