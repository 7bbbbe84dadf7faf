"""py-spy on a broker under load: record collapsed stacks, then rank the frames.

``overhead --py-spy DIR`` records each broker phase into ``DIR/<path>-c<N>.txt``
(py-spy's raw format: one ``frame;frame;... count`` line per distinct stack) and
``DIR/<path>-c<N>.top.txt``, the frames by inclusive and by self share of the samples.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# "func (path/to/file.py:123)" -> func, file (the line is dropped: frames merge per function)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SHORTEN = re.compile(r"^.*?/(?:site-packages|src|lib/python3\.\d+)/")
# Frames every sample passes through on the way in (the CLI and the server's start);
# left out of the summary unless they do work themselves.
_ENTRY = re.compile(
    r"\((?:typer/|click/|<string>|threading\.py|rentahal/cli\.py|uvicorn/(?:main|server|_compat)\.py)"
)


def py_spy_binary() -> str | None:
    """py-spy next to this interpreter (the venv's) or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def record(
    pid: int, out: Path, duration_s: float, rate: int = 200
) -> asyncio.subprocess.Process:
    """Start ``py-spy record`` on ``pid`` for ``duration_s`` (raw format into ``out``)."""
    binary = py_spy_binary()
    if binary is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    # --gil: only samples that hold the GIL, i.e. the broker's Python work (not its waits).
    cmd = [binary, "record", "--format", "raw", "--gil", "-r", str(rate)]
    cmd += ["-d", str(max(1, round(duration_s))), "-o", str(out), "-p", str(pid)]
    return await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


@dataclass(frozen=True, slots=True)
class FrameShare:
    """One function's share of the samples."""

    frame: str
    total_pct: float  # samples with the function anywhere on the stack
    self_pct: float  # samples with the function on top


def _name(raw: str) -> str:
    match = _FRAME.match(raw.strip())
    if match is None:
        return raw.strip()
    return f"{match['func']} ({_SHORTEN.sub('', match['file'])})"


def rank(collapsed: str) -> tuple[int, list[FrameShare]]:
    """The number of samples and every function's shares, by inclusive share."""
    total: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_name(f) for f in stack.split(";") if f]
        for frame in set(frames):
            total[frame] += count
        if frames:
            leaf[frames[-1]] += count
    if not samples:
        return 0, []
    shares = [
        FrameShare(frame, 100 * n / samples, 100 * leaf[frame] / samples)
        for frame, n in total.items()
    ]
    shares.sort(key=lambda s: (-s.total_pct, -s.self_pct))
    return samples, shares


def summary(collapsed: str, limit: int = 40) -> str:
    """A plain-text table: top frames by inclusive share, then by self share."""
    samples, shares = rank(collapsed)
    lines = [f"{samples} samples (GIL held)", "", "total%  self%  frame (inclusive)"]
    inner = [s for s in shares if s.self_pct > 0 or not _ENTRY.search(s.frame)]
    lines += [f"{s.total_pct:6.1f} {s.self_pct:6.1f}  {s.frame}" for s in inner[:limit]]
    lines += ["", "self%  total%  frame (by self)"]
    by_self = sorted(shares, key=lambda s: -s.self_pct)[:limit]
    lines += [f"{s.self_pct:6.1f} {s.total_pct:6.1f}  {s.frame}" for s in by_self]
    return "\n".join(lines) + "\n"
