"""The cyclic garbage collector tuned for a serving process.

A broker allocates many short-lived containers per query (tasks, futures,
dicts, models). With Python's default young-generation threshold (700) the
collector runs hundreds of times a second under load, and each full
collection walks every object the process made at start-up (the imported
libraries: about 170,000 objects, up to 150 ms a pass). While a node
serves, :func:`serving_heap` freezes what existed when it started (the
collector no longer walks it; ``gc.freeze``) and raises the young threshold,
so objects that die young are freed by reference counting before a
collection sees them. Cycles are still collected, only less often. On exit
the collector is as it was (the frozen objects are collectable again).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_depth = 0  # nested users (several apps in one process): the outermost restores
_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def serving_heap(young_threshold: int) -> Iterator[None]:
    """While inside: start-up objects frozen, the young generation collected after
    ``young_threshold`` allocations. ``0`` leaves the collector alone."""
    global _depth, _saved
    if young_threshold <= 0:
        yield
        return
    if _depth == 0:
        _saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(young_threshold, _saved[1], _saved[2])
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None
