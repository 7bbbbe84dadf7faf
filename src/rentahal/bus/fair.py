"""Start-time fair queuing: the order in which a queue offers its waiting jobs.

Each job gets a virtual *start tag* when it is queued::

    start = max(clock, finish[user])      finish[user] = start + 1 / weight(job)

and a queue offers its waiting jobs by ascending ``(start, seq)`` (``seq`` is
the queue's enqueue counter, so one user's jobs keep their order and ties go
first-come). ``clock`` is the largest start tag taken so far. A user with 200
queued jobs has start tags ``clock .. clock + 199``; another user's single job
starts at ``clock``, so it waits for about one job, not for the backlog. A
user's jobs that are cancelled before they run give their virtual time back.

:class:`FairClock` keeps this bookkeeping for the memory bus; the Redis bus
keeps the same state in Redis and runs the same rules in Lua
(:mod:`rentahal.bus.redis`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from rentahal.models import Job

#: How much of a queue a job's user is entitled to, relative to others (> 0).
Weight = Callable[[Job], float]


def unit_weight(_job: Job) -> float:
    """The default weight: every user has the same share."""
    return 1.0


def job_cost(weight: Weight, job: Job) -> float:
    """The virtual time one job of ``job``'s user takes (``1 / weight``, 1 when invalid)."""
    w = weight(job)
    return 1.0 / w if w > 0 else 1.0


@dataclass(slots=True, frozen=True)
class Tag:
    """A job's place in the fair order."""

    start: float
    cost: float
    seq: int
    flow: str

    @property
    def key(self) -> tuple[float, int]:
        """The sort key of the fair order."""
        return (self.start, self.seq)


class FairClock:
    """The virtual times of one queue: its clock and each user's last finish tag.

    Memory stays bounded by the users that have waiting jobs or were served
    recently: a finish tag at or below the clock no longer matters and is dropped.
    """

    def __init__(self) -> None:
        self.clock = 0.0
        self._finish: dict[str, float] = {}
        self._waiting: Counter[str] = Counter()
        self._seq = 0

    def stamp(self, flow: str, cost: float) -> Tag:
        """The tag of a new job of ``flow``, which now waits."""
        start = max(self.clock, self._finish.get(flow, 0.0))
        self._finish[flow] = start + cost
        self._seq += 1
        self._waiting[flow] += 1
        return Tag(start, cost, self._seq, flow)

    def refile(self, tag: Tag) -> None:
        """A taken job waits again (requeued, reclaimed): it keeps its tag."""
        self._waiting[tag.flow] += 1

    def served(self, tag: Tag) -> None:
        """A waiting job was taken: the clock moves to its start tag.

        When nothing waits any more the clock moves on to the last finish tag,
        as an idle server's does, and every finish tag can be forgotten.
        """
        self._leave(tag.flow)
        if not self._waiting and self._finish:
            self.clock = max(self.clock, tag.start, *self._finish.values())
            self._finish.clear()
        elif tag.start > self.clock:
            self.clock = tag.start
            self._finish = {f: t for f, t in self._finish.items() if t > self.clock}

    def withdrawn(self, tag: Tag) -> None:
        """A waiting job left without running: its user gets the virtual time back."""
        left = self._leave(tag.flow)
        if left == 0:
            self._finish.pop(tag.flow, None)
        elif self._finish.get(tag.flow) == tag.start + tag.cost:
            self._finish[tag.flow] = tag.start

    def _leave(self, flow: str) -> int:
        left = self._waiting[flow] - 1
        if left > 0:
            self._waiting[flow] = left
        else:
            self._waiting.pop(flow, None)
        return max(left, 0)

    @property
    def flows(self) -> int:
        """How many users the clock remembers (for tests of boundedness)."""
        return len(self._finish) + len(self._waiting)
