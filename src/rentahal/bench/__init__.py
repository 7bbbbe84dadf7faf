"""``rentahal bench``: load scenarios against real broker and worker processes on loopback.

It lives inside the package (not a top-level ``bench/``) so the installed
``rentahal`` command can import it.
"""

from __future__ import annotations

from rentahal.bench.cli import bench_app

__all__ = ["bench_app"]
