"""The memory bus asks a keyed filter once per key and scan, and still takes in fair order."""

from __future__ import annotations

from collections.abc import Hashable

from rentahal.bus.memory import MemoryBus
from rentahal.models import Job, Query


def make_job(prompt: str, query_type: str) -> Job:
    return Job(user_guid="user-1", query=Query(prompt=prompt, query_type=query_type))  # type: ignore[arg-type]


class TypeFilter:
    """Accepts the query types in ``ready``; counts how often it was asked."""

    def __init__(self, *ready: str, keyed: bool = True) -> None:
        self.ready = set(ready)
        self.keyed = keyed
        self.asked: list[str] = []

    def __call__(self, job: Job) -> bool:
        self.asked.append(job.query.prompt)
        return job.query.query_type in self.ready

    def scan_key(self, job: Job) -> Hashable | None:
        return job.query.query_type if self.keyed else None


async def test_one_question_per_key_and_scan_same_job_taken() -> None:
    bus = MemoryBus()
    for i in range(50):
        await bus.enqueue("q", make_job(f"i{i}", "imagine" if i % 2 else "vision"))
    await bus.enqueue("q", make_job("c", "chat"))

    keyed = TypeFilter("chat")
    taken = await bus.take("q", accept=keyed, timeout_s=0.1)
    assert taken is not None and taken.query.prompt == "c"
    assert keyed.asked == ["i0", "i1", "c"]  # one per key, the first of each in fair order

    plain = TypeFilter("imagine", keyed=False)  # no key: every job is asked
    taken = await bus.take("q", accept=plain, timeout_s=0.1)
    assert taken is not None and taken.query.prompt == "i1"
    assert plain.asked == ["i0", "i1"]

    # a new scan asks again: what was refused in the last one may be ready now
    keyed.ready = {"vision"}
    keyed.asked.clear()
    taken = await bus.take("q", accept=keyed, timeout_s=0.1)
    assert taken is not None and taken.query.prompt == "i0"
    assert keyed.asked == ["i0"]
    assert await bus.depth("q") == 48


async def test_a_job_whose_key_is_none_is_asked_even_after_refusals() -> None:
    bus = MemoryBus()
    for p in ("a", "b", "c"):
        await bus.enqueue("q", make_job(p, "chat"))

    class OnlyC(TypeFilter):
        def __call__(self, job: Job) -> bool:
            self.asked.append(job.query.prompt)
            return job.query.prompt == "c"

        def scan_key(self, job: Job) -> Hashable | None:
            return None if job.query.prompt == "c" else "chat"

    accept = OnlyC()
    taken = await bus.take("q", accept=accept, timeout_s=0.1)
    assert taken is not None and taken.query.prompt == "c"
    assert accept.asked == ["a", "c"]
