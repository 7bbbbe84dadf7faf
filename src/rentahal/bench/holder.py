"""A child process that holds idle WebSocket clients (``python .../bench/holder.py``).

Run by the ``connections`` scenario so that the clients' own memory and file
descriptors are not the measuring process's. It is started as a script, not as
``-m rentahal.bench.holder``, and imports nothing of ``rentahal``: the package
import (the whole broker) cost each holder ~1.4 s of CPU while the clock ran.
It speaks JSON lines on stdout: ``{"event": "progress", "connected": n}``, then
``{"event": "ready", ...}``; it then records when each client receives the
``sysop_message`` carrying the marker, prints ``{"event": "received", "times": [...]}``
and holds on until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time

import orjson
import websockets
from websockets.asyncio.client import ClientConnection


def _raise_nofile_limit() -> None:
    """Open-file limit up to the hard limit (as ``rentahal.bench.procs`` does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _emit(event: str, **fields: object) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


async def _open(url: str, deflate: bool) -> ClientConnection:
    ws = await websockets.connect(
        url,
        open_timeout=60,
        ping_interval=None,
        close_timeout=2,
        compression="deflate" if deflate else None,
        max_size=64 * 1024 * 1024,
    )
    async with asyncio.timeout(60):
        while True:
            message = orjson.loads(await ws.recv(decode=False))
            if message.get("type") in ("huggingface_update", "error"):
                if message.get("type") == "error":
                    raise RuntimeError(str(message.get("message")))
                return ws


def _deflate_accepted(ws: ClientConnection) -> bool:
    """Whether the server accepted the permessage-deflate the client offered."""
    response = ws.response
    if response is None:
        return False
    return "permessage-deflate" in response.headers.get("Sec-WebSocket-Extensions", "")


async def _listen(ws: ClientConnection, marker: bytes, times: list[float]) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            data = raw if isinstance(raw, bytes) else raw.encode()
            if marker in data and b'"sysop_message"' in data:
                times.append(time.time())
                return


async def main(args: argparse.Namespace) -> None:
    """Open the clients, report, wait for the broadcast, hold until stdin closes."""
    _raise_nofile_limit()
    gate = asyncio.Semaphore(args.parallel)
    clients: list[ClientConnection] = []
    failures: list[str] = []
    accepted: list[int] = []  # connections on which the broker accepted permessage-deflate
    deadline = time.monotonic() + args.connect_timeout_s

    async def one() -> None:
        async with gate:
            if time.monotonic() > deadline:
                return
            try:
                ws = await _open(args.url, args.deflate)
                clients.append(ws)
                if _deflate_accepted(ws):
                    accepted.append(1)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            if len(clients) % 100 == 0:
                _emit("progress", connected=len(clients))

    await asyncio.gather(*(one() for _ in range(args.count)))
    _emit(
        "ready",
        connected=len(clients),
        failed=len(failures),
        first_error=failures[:1],
        deflate_accepted=len(accepted),
    )
    times: list[float] = []
    listeners = [asyncio.create_task(_listen(ws, args.marker.encode(), times)) for ws in clients]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.wait_s):
            await asyncio.gather(*listeners)
    for task in listeners:
        task.cancel()
    _emit("received", times=times, missing=len(clients) - len(times))
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.wait_s):
            await loop.run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--connect-timeout-s", type=float, default=60.0)
    parser.add_argument("--wait-s", type=float, default=60.0)
    parser.add_argument("--deflate", action=argparse.BooleanOptionalAction, default=True)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
