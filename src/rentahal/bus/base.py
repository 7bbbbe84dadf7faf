"""The ``Bus``: realm queues and cluster-wide broadcasts, in memory or on Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol

from rentahal.models import Job

JobFilter = Callable[[Job], bool]


class KeyedJobFilter(Protocol):
    """A :data:`JobFilter` whose verdict is the same for jobs of the same key.

    ``scan_key(job)`` names what the verdict depends on (``None``: this job's
    verdict is its own). A bus that knows it may ask once per key and scan,
    skipping the other jobs of a key refused in the same synchronous scan.
    """

    def __call__(self, job: Job) -> bool: ...

    def scan_key(self, job: Job) -> Hashable | None:
        """What ``job``'s verdict depends on, or ``None`` when it is its own."""
        ...


class JobReserver(Protocol):
    """Reserves a worker for a job before a take: a bus may then take several at once."""

    def reserve(self, job: Job) -> bool:
        """Hold a worker slot for ``job``; ``False`` when none is free."""
        ...

    def release(self, job: Job) -> None:
        """Give back the slot :meth:`reserve` held for ``job`` (it was not taken)."""
        ...


MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Bus(Protocol):
    """Queues of jobs (one per realm) and publish/subscribe channels.

    A queue is fair between users (start-time fair queuing, see
    :mod:`rentahal.bus.fair`): one user's backlog delays another user's job by
    about one job, not by the backlog; one user's jobs keep their order.

    A job taken with :meth:`take` is pending until :meth:`ack`; a node that dies
    before acking loses nothing (the distributed bus hands the job to another
    node). ``accept`` lets a consumer skip jobs it cannot run now (the legacy
    queue mixes query types); queues of one type pass ``None``.
    """

    async def start(self) -> None:
        """Connect and start background listeners."""
        ...

    async def close(self) -> None:
        """Stop listeners and disconnect."""
        ...

    async def enqueue(self, queue: str, job: Job) -> None:
        """Append ``job`` to ``queue``."""
        ...

    async def take(
        self, queue: str, *, accept: JobFilter | None = None, timeout_s: float = 1.0
    ) -> Job | None:
        """The first acceptable job in fair order, or ``None`` after ``timeout_s``."""
        ...

    async def take_batch(
        self,
        queue: str,
        *,
        accept: JobFilter | None = None,
        reserve: JobReserver | None = None,
        timeout_s: float = 1.0,
    ) -> list[Job]:
        """Like :meth:`take`, but a bus may answer several jobs in fair order: jobs
        ``reserve`` held a worker for (every one it answers but the first has one)."""
        ...

    def wake(self, queue: str) -> None:
        """Make waiting :meth:`take` calls look again (capacity changed)."""
        ...

    async def ack(self, queue: str, job_id: str) -> None:
        """The job is finished and recorded; forget it."""
        ...

    async def requeue(self, queue: str, job: Job) -> None:
        """Hand a taken job back, at its place in the fair order (near the head)."""
        ...

    async def remove(self, queue: str, job_id: str) -> Job | None:
        """Take a waiting job out (cancellation); ``None`` when it is not waiting."""
        ...

    async def waiting(self, queue: str) -> list[Job]:
        """The waiting jobs in the fair order :meth:`take` offers them."""
        ...

    async def depth(self, queue: str) -> int:
        """How many jobs wait in ``queue``."""
        ...

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every subscriber of ``channel`` on every node."""
        ...

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call ``handler`` for each message published on ``channel``."""
        ...
