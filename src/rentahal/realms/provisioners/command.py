"""Provisioners that run commands: a local worker process per port, or start/stop scripts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import sys
from collections.abc import Mapping

from rentahal.realms.provisioners.base import Provisioned, ProvisionError

STOP_GRACE_S = 10.0
SCRIPT_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _argv(template: str, **values: str) -> list[str]:
    argv = [part.format(**values) for part in shlex.split(template)]
    if argv and argv[0] == "rentahal":
        # The broker's own command, from the same installation as the broker.
        argv = [sys.executable, "-m", "rentahal", *argv[1:]]
    return argv


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalCommandProvisioner:
    """Runs ``command`` with a ``{port}`` chosen here: the process is the worker 127.0.0.1:{port}.

    Each process is the leader of its own process group and gets SIGTERM when
    the broker dies; ``stop`` sends SIGTERM to the group, then SIGKILL.
    """

    def __init__(self, command: str) -> None:
        self.command = command

    async def start(
        self, name: str, realm: str, query_type: str, values: Mapping[str, str]
    ) -> Provisioned:
        """Start the process."""
        port = _free_port()
        argv = _argv(
            self.command, port=str(port), name=name, realm=realm, query_type=query_type, **values
        )
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise ProvisionError(f"could not run {argv[0]}: {exc}") from None
        return Provisioned(name, f"127.0.0.1:{port}", realm, query_type, handle=process)

    async def stop(self, worker: Provisioned) -> None:
        """SIGTERM the process group, SIGKILL after ``STOP_GRACE_S``."""
        process = worker.handle
        if not isinstance(process, asyncio.subprocess.Process) or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


class ScriptProvisioner:
    """For other machines: ``start`` prints the worker's address, ``stop`` gets name and address."""

    def __init__(self, start: str, stop: str) -> None:
        self.start_cmd = start
        self.stop_cmd = stop

    async def _run(self, argv: list[str]) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProvisionError(f"could not run {argv[0]}: {exc}") from None
        try:
            async with asyncio.timeout(SCRIPT_TIMEOUT_S):
                out, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise ProvisionError(f"{argv[0]} did not finish within {SCRIPT_TIMEOUT_S:g}s") from None
        if process.returncode != 0:
            tail = err.decode(errors="replace").strip()[-200:]
            raise ProvisionError(f"{argv[0]} exited with {process.returncode}: {tail}")
        return out.decode(errors="replace")

    async def start(
        self, name: str, realm: str, query_type: str, values: Mapping[str, str]
    ) -> Provisioned:
        """Run ``start``; its last non-empty output line is the worker's ``host:port``."""
        out = await self._run(
            _argv(self.start_cmd, name=name, realm=realm, query_type=query_type, **values)
        )
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        address = lines[-1] if lines else ""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or "/" in address or " " in address:
            raise ProvisionError(f"start printed no host:port address (got {address[:100]!r})")
        return Provisioned(name, address, realm, query_type)

    async def stop(self, worker: Provisioned) -> None:
        """Run ``stop`` with the worker's name and address."""
        await self._run(
            _argv(
                self.stop_cmd,
                name=worker.name,
                address=worker.address,
                realm=worker.realm,
                query_type=worker.query_type,
            )
        )
