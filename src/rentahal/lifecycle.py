"""Process lifecycle for the commands: a clean exit on SIGTERM/SIGINT, children that die with us.

uvicorn handles SIGTERM and SIGINT itself while it serves; when it has shut
down it restores the handlers it found and raises the signal again. With the
default SIGTERM handler that second delivery kills the process on the spot, so
nothing after ``uvicorn.run`` (stopping the demo's workers) would run.
:func:`exit_on_signals` installs handlers that turn both signals into
``SystemExit(0)``: cleanup code in ``finally`` blocks runs and the exit code
is 0, whether the signal comes while uvicorn serves or before it started.

A parent killed with SIGKILL runs no cleanup at all; :func:`die_with_parent`
is a ``preexec_fn`` that asks Linux to send the child SIGTERM when its parent
dies (``prctl(PR_SET_PDEATHSIG)``). Children also stay in the parent's process
group, so ``kill -TERM -<pgid>`` reaches all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise ``SystemExit(0)``; old handlers after."""
    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, _exit_cleanly) for sig in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


# Looked up once in the parent: a preexec_fn should not load libraries after fork().
_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` giving the child SIGTERM when this process dies (Linux; else None).

    Call it in the thread that spawns the child and keeps running: Linux sends the
    signal when the spawning *thread* ends.
    """
    if _PRCTL is None:
        return None
    prctl = _PRCTL
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
