"""Several broker node processes on one Redis and one PostgreSQL (issue 5).

One :class:`Cluster` (Redis, PostgreSQL, reference workers, three nodes) is
shared by the module; each test gets a fresh database, an empty Redis and
freshly started nodes (``Cluster.prepare``).
"""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.support.client import WSClient
from tests.support.cluster import Cluster, new_guid
from tests.support.servers import worker_stats

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

FAST_MS = 50.0
SLOW_MS = 1500.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three nodes plus Redis, PostgreSQL and the module's reference workers."""
    with Cluster(nodes=3) as started:
        for name in ("fast1", "fast2"):
            started.start_worker(name, latency_ms=FAST_MS)
        for name in ("slow1", "slow2"):
            started.start_worker(name, latency_ms=SLOW_MS)
        yield started


class ClusterUser:
    """One user GUID with one live socket at a time; every frame is tracked by ``job_id``.

    ``socket_no`` counts the sockets the user has opened, so a result seen
    twice on one socket (a duplicate) can be told from one seen again after a
    reconnect.
    """

    def __init__(self, guid: str | None = None) -> None:
        self.guid = guid or new_guid()
        self.client: WSClient | None = None
        self.url = ""
        self.socket_no = 0
        self.queued: list[str] = []
        self.results: dict[str, list[int]] = defaultdict(list)
        self.costs: dict[str, float] = {}
        self.errors: list[dict[str, Any]] = []
        self.cancelled: Counter[str] = Counter()
        self.sysop_messages: list[str] = []
        self.worker_updates: list[list[dict[str, Any]]] = []

    async def connect(self, url: str, timeout_s: float = 15.0) -> None:
        """Open a socket to ``url`` with the user's cookie (closing the old one), retrying."""
        await self.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client = await WSClient.connect(url, self.guid, open_timeout=5)
                break
            except (OSError, InvalidHandshake, InvalidStatus, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self.client = client
        self.url = url
        self.socket_no += 1
        for message in await client.connect_sequence():
            if message["type"] != "sysop_message":  # the welcome texts
                self._note(message)

    async def close(self) -> None:
        """Close the live socket, if any."""
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.close(), 5)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            self.client = None

    def _note(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "query_queued":
            self.queued.append(message["job_id"])
        elif kind == "query_result":
            self.results[message.get("job_id", "?")].append(self.socket_no)
            self.costs[message.get("job_id", "?")] = float(message["cost"])
        elif kind == "query_cancelled":
            self.cancelled[message["job_id"]] += 1
        elif kind == "error":
            self.errors.append(message)
        elif kind == "sysop_message":
            self.sysop_messages.append(message["message"])
        elif kind == "worker_update":
            self.worker_updates.append(message["workers"])

    async def send(self, message: dict[str, Any]) -> None:
        """Send a frame on the live socket."""
        assert self.client is not None, "not connected"
        await self.client.send(message)

    async def submit(self, count: int, prompt: str = "q", timeout_s: float = 15.0) -> list[str]:
        """Submit ``count`` chat queries at once; their job ids (from ``query_queued``)."""
        before = len(self.queued)
        for i in range(count):
            query = {"prompt": f"{prompt}-{i}", "query_type": "chat", "model_type": "worker_node"}
            await self.send({"type": "submit_query", "query": query})
        await self.pump(lambda: len(self.queued) >= before + count, timeout_s)
        return self.queued[before : before + count]

    async def pump(
        self,
        done: Callable[[], bool],
        timeout_s: float,
        reconnect_to: Callable[[], str] | None = None,
    ) -> bool:
        """Read frames until ``done()`` or ``timeout_s``; whether ``done()`` became true.

        When the socket closes, reconnect (same GUID) to ``reconnect_to()``
        if given, else raise.
        """
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.client is None:
                assert reconnect_to is not None
                await self.connect(reconnect_to(), timeout_s=max(left, 1.0))
                continue
            try:
                self._note(await self.client.recv(min(left, 0.5)))
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.client = None
                if reconnect_to is None:
                    raise
        return True

    async def wait_settled(
        self,
        job_ids: list[str],
        timeout_s: float,
        reconnect_to: Callable[[], str] | None = None,
    ) -> bool:
        """Read frames until each of ``job_ids`` has a result or an error (or ``timeout_s``)."""
        return await self.pump(lambda: self.settled(job_ids), timeout_s, reconnect_to)

    async def wait_sysop_message(self, text: str, timeout_s: float) -> bool:
        """Read frames until the sysop message ``text`` arrives (or ``timeout_s``)."""
        return await self.pump(lambda: text in self.sysop_messages, timeout_s)

    def queued_or_failed(self, count: int) -> Callable[[], bool]:
        """A condition: more than ``count`` jobs queued, or an error arrived."""
        return lambda: len(self.queued) > count or bool(self.errors)

    def settled(self, job_ids: list[str]) -> bool:
        """Whether each of ``job_ids`` has a ``query_result`` or an ``error``."""
        failed = {e.get("job_id") for e in self.errors}
        return all(self.results.get(j) or j in failed for j in job_ids)

    def answered(self, job_ids: list[str]) -> bool:
        """Whether each of ``job_ids`` has a ``query_result``."""
        return all(self.results.get(j) for j in job_ids)

    def duplicates(self) -> dict[str, list[int]]:
        """Jobs whose ``query_result`` arrived more than once on one socket."""
        return {j: s for j, s in self.results.items() if len(s) != len(set(s))}


async def close_all(users: list[ClusterUser]) -> None:
    """Close every user's socket."""
    await asyncio.gather(*(u.close() for u in users), return_exceptions=True)


async def check_ledger(cluster: Cluster, users: list[ClusterUser], jobs: set[str]) -> None:
    """The ledger holds exactly ``jobs``, once each, completed, and all totals add up."""
    rows = await cluster.fetch("SELECT job_id, user_guid, status, cost FROM queries")
    per_job = Counter(r["job_id"] for r in rows)
    twice = {j: n for j, n in per_job.items() if n > 1}
    assert not twice, f"jobs recorded more than once: {twice}"
    assert set(per_job) == jobs, (
        f"ledger rows {len(rows)}, expected {len(jobs)}; "
        f"missing {sorted(jobs - set(per_job))[:5]}, extra {sorted(set(per_job) - jobs)[:5]}"
    )
    statuses = Counter(r["status"] for r in rows)
    assert statuses == {"done": len(jobs)}, f"statuses {dict(statuses)}"
    stats = (await cluster.fetch("SELECT total_queries, total_cost FROM system_stats"))[0]
    total = sum(r["cost"] for r in rows)
    assert stats["total_queries"] == len(jobs)
    assert math.isclose(stats["total_cost"], total, rel_tol=1e-9, abs_tol=1e-9)
    by_user: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_user[r["user_guid"]].append(r["cost"])
    db_users = {
        u["guid"]: u for u in await cluster.fetch("SELECT guid, query_count, total_cost FROM users")
    }
    for user in users:
        costs = by_user.get(user.guid, [])
        row = db_users[user.guid]
        assert row["query_count"] == len(costs), f"user {user.guid} query_count"
        assert math.isclose(row["total_cost"], sum(costs), rel_tol=1e-9, abs_tol=1e-9)
        for job_id, cost in user.costs.items():
            assert any(math.isclose(cost, c, abs_tol=1e-12) for c in costs), job_id


def missing_report(users: list[ClusterUser], jobs_of: dict[str, list[str]]) -> str:
    """Which jobs got no ``query_result``, and the errors seen, for assertion messages."""
    missing = [j for u in users for j in jobs_of[u.guid] if not u.results.get(j)]
    errors = [e for u in users for e in u.errors][:5]
    return f"{len(missing)} unanswered (first {missing[:5]}); errors {errors}"


# 1 ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_every_query_answered_once_and_ledger_exact(cluster: Cluster) -> None:
    cluster.prepare([cluster.record("fast1"), cluster.record("fast2")])
    users = [ClusterUser() for _ in range(6)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i % 3).ws_url)
        started = time.monotonic()
        jobs_of = {
            u.guid: ids
            for u, ids in zip(
                users,
                await asyncio.gather(*(u.submit(10, f"u{n}") for n, u in enumerate(users))),
                strict=True,
            )
        }
        await asyncio.gather(*(u.wait_settled(jobs_of[u.guid], 45) for u in users))
        elapsed = time.monotonic() - started
        await asyncio.gather(*(u.pump(lambda: False, 1.0) for u in users))  # late duplicates
        all_jobs = {j for ids in jobs_of.values() for j in ids}
        answered = sum(1 for u in users for j in jobs_of[u.guid] if u.results.get(j))
        dupes = {j: s for u in users for j, s in u.duplicates().items()}
        strays = [j for u in users for j in u.results if j not in jobs_of[u.guid]]
        print(
            f"\nCLUSTER FIGURES nodes=3 clients=6 queries={len(all_jobs)} answered={answered} "
            f"lost={len(all_jobs) - answered} duplicates={len(dupes)} elapsed_s={elapsed:.2f}"
        )
        assert len(all_jobs) == 60
        assert answered == 60, missing_report(users, jobs_of)
        assert not dupes, f"query_result delivered twice: {dupes}"
        assert not strays, f"results of other users' jobs: {strays}"
        assert not [e for u in users for e in u.errors]
        await check_ledger(cluster, users, all_jobs)
    finally:
        await close_all(users)


# 3 ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_max_concurrency_one_holds_across_nodes(cluster: Cluster) -> None:
    address = cluster.start_worker("solo", latency_ms=100)
    cluster.prepare([cluster.record("solo", max_concurrency=1)])
    users = [ClusterUser() for _ in range(3)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i).ws_url)
        ids = await asyncio.gather(*(u.submit(4, "solo") for u in users))
        await asyncio.gather(*(u.wait_settled(j, 40) for u, j in zip(users, ids, strict=True)))
        assert all(u.answered(j) for u, j in zip(users, ids, strict=True)), missing_report(
            users, {u.guid: j for u, j in zip(users, ids, strict=True)}
        )
        stats = worker_stats(address)
        assert stats["max_in_flight_seen"] == 1, f"worker saw {stats}"
    finally:
        await close_all(users)
        cluster.stop_worker("solo")


# 4 ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_cancel_through_another_node(cluster: Cluster) -> None:
    cluster.start_worker("glacial", latency_ms=30000)  # outlasts a slow node start
    cluster.prepare([cluster.record("glacial", max_concurrency=2)])
    # Only node A runs while the query is taken, so node A is the one running it.
    cluster.stop(1)
    cluster.stop(2)
    on_a, on_b = ClusterUser(), None
    try:
        await on_a.connect(cluster.node(0).ws_url)
        (job_id,) = await on_a.submit(1, "cancel me")
        cluster.start(1)
        on_b = ClusterUser(on_a.guid)
        await on_b.connect(cluster.node(1).ws_url)
        await on_b.send({"type": "cancel_query", "job_id": job_id})
        # The socket that submitted (node A) learns of the cancellation ...
        if not await on_a.pump(lambda: on_a.cancelled[job_id] > 0 or bool(on_b.errors), 10):
            await on_b.pump(lambda: bool(on_b.errors), 1)
            found = await cluster.fetch(
                "SELECT status, cost FROM queries WHERE job_id = $1", job_id
            )
            pytest.fail(
                "no query_cancelled on node A within 10 s of cancel_query via node B; "
                f"errors on B {on_b.errors}; ledger rows {found}"
            )
        assert not on_b.errors, f"cancel via node B refused: {on_b.errors}"
        # ... and so does the user's socket on node B, as every result reaches all of them.
        assert await on_b.pump(lambda: on_b.cancelled[job_id] > 0, 5), (
            "query_cancelled reached the user's socket on node A but not the one on node B"
        )
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not rows and time.monotonic() < deadline:
            rows = await cluster.fetch("SELECT status, cost FROM queries WHERE job_id = $1", job_id)
            await asyncio.sleep(0.2)
        assert rows == [{"status": "cancelled", "cost": 0.0}]
        # the worker call was really dropped: no result turns up after all
        await on_a.pump(lambda: bool(on_a.results), 2)
        assert job_id not in on_a.results
    finally:
        await on_a.close()
        if on_b is not None:
            await on_b.close()
        cluster.stop_worker("glacial")


@pytest.mark.timeout(60)
async def test_result_reaches_the_users_sockets_on_every_node(cluster: Cluster) -> None:
    cluster.prepare([cluster.record("fast1")])
    guid = new_guid()
    tabs = [ClusterUser(guid) for _ in range(3)]
    try:
        for i, tab in enumerate(tabs):
            await tab.connect(cluster.node(i).ws_url)
        (job_id,) = await tabs[0].submit(1, "three tabs")
        await asyncio.gather(*(t.wait_settled([job_id], 10) for t in tabs))
        got = [i for i, t in enumerate(tabs) if t.answered([job_id])]
        assert got == [0, 1, 2], f"the result reached the tabs on nodes {got} only"
    finally:
        await close_all(tabs)


# 5 ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_sysop_message_reaches_every_node(cluster: Cluster) -> None:
    sysop = ClusterUser()
    cluster.prepare([cluster.record("fast1")], sysop_guid=sysop.guid)
    users = [ClusterUser() for _ in range(3)]
    try:
        await sysop.connect(cluster.node(0).ws_url)
        for i, user in enumerate(users):
            await user.connect(cluster.node(i).ws_url)
        text = f"maintenance at noon {uuid.uuid4().hex[:6]}"
        await sysop.send({"type": "sysop_message", "message": text})
        await asyncio.gather(*(u.wait_sysop_message(text, 10) for u in [sysop, *users]))
        reached = [i for i, u in enumerate(users) if text in u.sysop_messages]
        assert reached == [0, 1, 2], f"reached users on nodes {reached} only"
        assert not sysop.errors
    finally:
        await close_all([sysop, *users])


# 6 ---------------------------------------------------------------------------------


async def _answers_within(user: ClusterUser, timeout_s: float) -> bool:
    """Submit one query at a time (again after an error) until one is answered."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        user.errors.clear()
        queued = len(user.queued)
        query = {"prompt": "probe", "query_type": "chat", "model_type": "worker_node"}
        await user.send({"type": "submit_query", "query": query})
        left = max(deadline - time.monotonic(), 0.5)
        await user.pump(user.queued_or_failed(queued), min(left, 10))
        if len(user.queued) > queued:
            probe = [user.queued[queued]]
            await user.wait_settled(probe, min(left, 10))
            if user.answered(probe):
                return True
        await asyncio.sleep(0.5)
    return False


@pytest.mark.timeout(120)
async def test_redis_restart_nodes_carry_on(cluster: Cluster) -> None:
    cluster.prepare([cluster.record("fast1"), cluster.record("fast2")])
    users = [ClusterUser() for _ in range(3)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i).ws_url)
        before = await asyncio.gather(*(u.submit(3, "before") for u in users))
        await asyncio.gather(*(u.wait_settled(j, 20) for u, j in zip(users, before, strict=True)))
        assert all(u.answered(j) for u, j in zip(users, before, strict=True))
        recorded = await cluster.fetch("SELECT job_id, cost FROM queries ORDER BY job_id")
        assert len(recorded) == 9

        cluster.redis.restart()
        # Give the nodes a bounded time to reconnect: until each answers one query.
        recovered = await asyncio.gather(*(_answers_within(u, 30) for u in users))
        assert recovered == [True] * 3, f"nodes answering after the restart: {recovered}"
        assert all(cluster.node(i).running for i in range(3))

        for user in users:
            user.errors.clear()
        after = await asyncio.gather(*(u.submit(5, "after") for u in users))
        await asyncio.gather(*(u.wait_settled(j, 30) for u, j in zip(users, after, strict=True)))
        assert all(u.answered(j) for u, j in zip(users, after, strict=True)), missing_report(
            users, {u.guid: j for u, j in zip(users, after, strict=True)}
        )
        late = [e for u in users for e in u.errors]
        assert not late, f"error frames after every node had recovered: {late}"
        rows = await cluster.fetch("SELECT job_id, cost FROM queries ORDER BY job_id")
        by_job = {r["job_id"]: r["cost"] for r in rows}
        assert all(by_job.get(r["job_id"]) == r["cost"] for r in recorded), "rows were lost"
        assert all(j in by_job for ids in after for j in ids)
        assert len(by_job) == len(rows), "a job was recorded twice"
    finally:
        await close_all(users)


# 7 ---------------------------------------------------------------------------------


async def _health(cluster: Cluster, name: str) -> tuple[float, bool]:
    row = (
        await cluster.fetch(
            "SELECT health_score, is_blacklisted FROM ai_workers WHERE name = $1", name
        )
    )[0]
    return float(row["health_score"]), bool(row["is_blacklisted"])


async def _wait_health(
    cluster: Cluster, name: str, done: Callable[[float, bool], bool], timeout_s: float
) -> tuple[float, bool]:
    deadline = time.monotonic() + timeout_s
    seen = await _health(cluster, name)
    while not done(*seen):
        if time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.25)
        seen = await _health(cluster, name)
    return seen


@pytest.mark.timeout(150)
async def test_health_loop_fails_over_to_another_node(cluster: Cluster) -> None:
    cluster.start_worker("probed", latency_ms=0)
    cluster.prepare(
        [cluster.record("probed")],
        env={
            "RENTAHAL_WORKERS__HEALTH_CHECK_INTERVAL": "0.5",
            "RENTAHAL_WORKERS__HEALTH_TIMEOUT_S": "1",
        },
    )
    watcher = ClusterUser()
    try:
        # Node A alone: it must hold the leadership whatever happened at start.
        cluster.stop(1)
        cluster.stop(2)
        cluster.stop_worker("probed")
        health, _ = await _wait_health(cluster, "probed", lambda h, b: h <= 90, 20)
        assert health <= 90, f"node A alone did not probe: health {health}"

        cluster.start_nodes([1, 2])
        await watcher.connect(cluster.node(2).ws_url)
        cluster.kill(0)  # the leader dies without releasing anything
        dead_at, _ = await _health(cluster, "probed")
        health, blacklisted = await _wait_health(
            cluster, "probed", lambda h, b: h < dead_at or (h == 0 and b), 30
        )
        assert health < dead_at or (health == 0 and blacklisted), (
            f"health stuck at {health} after the leader died: nobody probes"
        )

        cluster.start_worker("probed")
        health, blacklisted = await _wait_health(
            cluster, "probed", lambda h, b: h >= 90 and not b, 30
        )
        assert health >= 90 and not blacklisted, (
            f"worker back, but health {health}, blacklisted {blacklisted}"
        )
        # node C's users saw the changes as worker_update broadcasts
        await watcher.pump(
            lambda: any(
                w["name"] == "probed" and w["health_score"] >= 90
                for ws in watcher.worker_updates[1:]
                for w in ws
            ),
            5,
        )
        scores = [
            w["health_score"] for ws in watcher.worker_updates for w in ws if w["name"] == "probed"
        ]
        assert len(set(scores)) > 1, f"worker_update on node C showed health {scores}"
    finally:
        await watcher.close()
        cluster.stop_worker("probed")


# 2 ---------------------------------------------------------------------------------


def _survivor(cluster: Cluster, avoid: int) -> Callable[[], str]:
    """Round robin over the live nodes other than ``avoid`` (a load balancer's view)."""
    turn = iter(range(10_000))

    def pick() -> str:
        live = [n for n in cluster.nodes if n.index != avoid and n.running]
        return live[next(turn) % len(live)].ws_url

    return pick


@pytest.mark.timeout(180)
async def test_kill_9_node_with_queries_in_flight(cluster: Cluster) -> None:
    cluster.prepare(
        [cluster.record("slow1", max_concurrency=6), cluster.record("slow2", max_concurrency=6)]
    )
    users = [ClusterUser() for _ in range(6)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i % 3).ws_url)
        ids = await asyncio.gather(*(u.submit(3, f"k{n}") for n, u in enumerate(users)))
        jobs_of = {u.guid: j for u, j in zip(users, ids, strict=True)}
        await asyncio.sleep(0.5)  # the first ones are at the workers now
        started = time.monotonic()
        cluster.kill(0)
        await asyncio.gather(
            *(u.wait_settled(jobs_of[u.guid], 90, _survivor(cluster, 0)) for u in users)
        )
        elapsed = time.monotonic() - started
        await asyncio.gather(*(u.pump(lambda: False, 1.0, _survivor(cluster, 0)) for u in users))
        answered = sum(1 for u in users if u.answered(jobs_of[u.guid]))
        assert answered == 6, missing_report(users, jobs_of) + f" after {elapsed:.1f}s"
        # the killed node's clients really went through a reconnect
        assert all(u.socket_no >= 2 for u in users[::3]), [u.socket_no for u in users]
        dupes = {j: s for u in users for j, s in u.duplicates().items()}
        assert not dupes, f"query_result twice on one socket: {dupes}"
        await check_ledger(cluster, users, {j for js in ids for j in js})
    finally:
        await close_all(users)


# 8 ---------------------------------------------------------------------------------


def _exit_code(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The exit code of ``process``, or ``None`` if it still runs after ``timeout_s``."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.timeout(150)
async def test_sigterm_node_with_queries_in_flight(cluster: Cluster) -> None:
    cluster.prepare(
        [cluster.record("slow1", max_concurrency=6), cluster.record("slow2", max_concurrency=6)]
    )
    users = [ClusterUser() for _ in range(6)]
    try:
        for i, user in enumerate(users):
            await user.connect(cluster.node(i % 3).ws_url)
        ids = await asyncio.gather(*(u.submit(3, f"t{n}") for n, u in enumerate(users)))
        jobs_of = {u.guid: j for u, j in zip(users, ids, strict=True)}
        await asyncio.sleep(0.5)
        process = cluster.stop_nowait(0)
        assert process is not None
        await asyncio.gather(
            *(u.wait_settled(jobs_of[u.guid], 60, _survivor(cluster, 0)) for u in users)
        )
        code = await asyncio.to_thread(_exit_code, process, 30)
        log = cluster.node(0).log_tail(60)
        cluster.forget(0)
        problems = []
        answered = sum(1 for u in users if u.answered(jobs_of[u.guid]))
        if answered != 6:
            problems.append(missing_report(users, jobs_of))
        # uvicorn re-raises the signal after a clean shutdown, so -SIGTERM is a clean exit too
        if code not in (0, -signal.SIGTERM) or "Application shutdown complete" not in log:
            problems.append(f"node A did not shut down cleanly within 30 s (exit {code})")
        dupes = {j: s for u in users for j, s in u.duplicates().items()}
        if dupes:
            problems.append(f"query_result twice on one socket: {dupes}")
        assert not problems, "; ".join(problems) + f"\nnode A log:\n{log}"
        await check_ledger(cluster, users, {j for js in ids for j in js})
    finally:
        await close_all(users)


# shares ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_queue_share_holds_across_nodes(cluster: Cluster) -> None:
    from rentahal.bus.counters import RedisCounters
    from rentahal.shares import address_key, user_key

    cluster.start_worker("share", latency_ms=4000)
    cluster.prepare(
        [cluster.record("share", max_concurrency=30)],
        env={"RENTAHAL_QUEUE__MAX_QUEUED_PER_USER": "10"},
    )
    guid = new_guid()
    tabs = [ClusterUser(guid) for _ in range(3)]
    counters = RedisCounters(cluster.redis.url)
    try:
        for i, tab in enumerate(tabs):
            await tab.connect(cluster.node(i).ws_url)
        query = {"prompt": "share", "query_type": "chat", "model_type": "worker_node"}

        async def flood(tab: ClusterUser) -> None:
            for _ in range(10):
                await tab.send({"type": "submit_query", "query": query})

        await asyncio.gather(*(flood(t) for t in tabs))
        # The other tabs see every result too, so count this tab's own answers only.
        await asyncio.gather(
            *(t.pump(lambda t=t: len(t.queued) + len(t.errors) >= 10, 20) for t in tabs)
        )
        accepted = [j for t in tabs for j in t.queued]
        refused = [e["message"] for t in tabs for e in t.errors]
        assert len(accepted) == 10, f"accepted {len(accepted)} of 30 (share 10); refused {refused}"
        assert all("You already have 10 queries waiting" in m for m in refused), refused
        assert await counters.count(user_key(guid)) == 10
        await asyncio.gather(*(t.wait_settled(accepted, 30) for t in tabs))
        assert all(t.answered(accepted) for t in tabs)
        for _ in range(50):  # the owner node releases on the result it also receives
            if not await counters.count(user_key(guid)):
                break
            await asyncio.sleep(0.1)
        assert await counters.count(user_key(guid)) == 0
        assert await counters.count(address_key("127.0.0.1")) == 0
    finally:
        await counters.close()
        await close_all(tabs)
        cluster.stop_worker("share")
