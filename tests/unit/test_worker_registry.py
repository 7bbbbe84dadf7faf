"""WorkerRegistry: capacity, selection, the circuit state machine, 429 cool-downs, resets."""

from __future__ import annotations

import types
from typing import Any

import pytest

from rentahal.config import WorkerSettingsSection
from rentahal.errors import (
    NoWorkerAvailable,
    WorkerBadResponse,
    WorkerCircuitOpen,
    WorkerRateLimited,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnavailable,
)
from rentahal.models import AIWorker, Query
from rentahal.realms import workers as workers_module
from rentahal.realms.workers import WorkerRegistry


class Clock:
    """A controllable ``time.monotonic`` for the registry module."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replace the registry module's clock (only that module's ``time`` name)."""
    fake = Clock()
    monkeypatch.setattr(workers_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _worker(name: str, wtype: str = "chat", **kw: Any) -> AIWorker:
    return AIWorker(name=name, address="127.0.0.1:1", type=wtype, **kw)  # type: ignore[arg-type]


def _registry(*workers: AIWorker, **settings: Any) -> WorkerRegistry:
    registry = WorkerRegistry(WorkerSettingsSection(**settings))
    for worker in workers:
        registry.add(worker)
    return registry


CHAT = Query(prompt="hi", query_type="chat")


def _fail(registry: WorkerRegistry, name: str, times: int = 1) -> None:
    for _ in range(times):
        registry.report_failure(name, WorkerUnavailable("boom", worker=name, status=500))


# --- capacity -------------------------------------------------------------------------------


def test_reserve_respects_max_concurrency_and_release_frees() -> None:
    registry = _registry(_worker("a", max_concurrency=2))
    assert registry.reserve(CHAT) is not None
    assert registry.reserve(CHAT) is not None
    assert registry.reserve(CHAT) is None
    assert not registry.can_serve_now(CHAT)
    state = registry.get("a")
    assert state is not None and state.in_flight == 2 and state.calls_total == 2
    registry.release("a")
    assert registry.can_serve_now(CHAT)
    assert registry.reserve(CHAT) is not None


def test_release_never_goes_below_zero_and_unknown_names_are_ignored() -> None:
    registry = _registry(_worker("a"))
    registry.release("a")
    registry.release("nobody")
    registry.report_success("nobody")
    registry.report_failure("nobody", WorkerUnavailable("x"))
    state = registry.get("a")
    assert state is not None and state.in_flight == 0


def test_replacing_a_worker_keeps_its_in_flight_count() -> None:
    registry = _registry(_worker("a", max_concurrency=2))
    registry.reserve(CHAT)
    registry.add(_worker("a", max_concurrency=2, models=["m"]))
    state = registry.get("a")
    assert state is not None and state.in_flight == 1 and state.worker.models == ["m"]


def test_total_capacity_counts_usable_workers_of_the_types() -> None:
    registry = _registry(
        _worker("c1", max_concurrency=3),
        _worker("c2", max_concurrency=2, is_blacklisted=True),
        _worker("i1", "imagine", max_concurrency=1),
    )
    assert registry.total_capacity() == 4
    assert registry.total_capacity(["chat"]) == 3
    assert registry.total_capacity(["vision"]) == 0


def test_reserve_picks_the_healthiest_then_avoids_excluded() -> None:
    registry = _registry(_worker("a", health_score=60), _worker("b", health_score=90))
    picked = registry.reserve(CHAT)
    assert picked is not None and picked.name == "b"
    registry.release("b")
    other = registry.reserve(CHAT, exclude=["b"])
    assert other is not None and other.name == "a"
    registry.release("a")
    # excluding every worker still returns one: a retry may reuse the only worker
    again = registry.reserve(CHAT, exclude=["a", "b"])
    assert again is not None


def test_model_name_prefers_the_listing_worker_and_unknown_models_run_anywhere() -> None:
    registry = _registry(
        _worker("llama", models=["llama3"]), _worker("mistral", models=["mistral"])
    )
    picked = registry.reserve(Query(prompt="x", query_type="chat", model_name="mistral"))
    assert picked is not None and picked.name == "mistral"
    registry.release("mistral")
    unknown = Query(prompt="x", query_type="chat", model_name="gpt-9")
    registry.check_servable(unknown)  # model_name only prefers: any chat worker serves it
    assert {s.worker.name for s in registry.candidates("chat", "gpt-9")} == {"llama", "mistral"}


def test_workers_without_a_model_list_serve_any_model() -> None:
    registry = _registry(_worker("any"), _worker("llama", models=["llama3"]))
    picked = registry.reserve(Query(prompt="x", query_type="chat", model_name="other"))
    assert picked is not None and picked.name == "any"


def test_model_name_naming_a_worker_prefers_it() -> None:
    registry = _registry(_worker("gpu1", health_score=10), _worker("gpu2"))
    picked = registry.reserve(Query(prompt="x", query_type="chat", model_name="gpu1"))
    assert picked is not None and picked.name == "gpu1"


def test_unhealthy_preferred_worker_gives_way_to_any_healthy_one(clock: Clock) -> None:
    registry = _registry(
        _worker("llama", models=["llama3"]), _worker("other", models=["x"]), circuit_failures=1
    )
    llama3 = Query(prompt="x", query_type="chat", model_name="llama3")
    _fail(registry, "llama")
    picked = registry.reserve(llama3)
    assert picked is not None and picked.name == "other"
    registry.release("other")
    _fail(registry, "other")
    with pytest.raises(NoWorkerAvailable, match="worker llama is not answering"):
        registry.check_servable(llama3)  # no healthy one: the preferred one is named


def test_check_servable_refuses_when_every_worker_is_blacklisted() -> None:
    registry = _registry(_worker("a", is_blacklisted=True))
    with pytest.raises(NoWorkerAvailable, match="No chat worker is available"):
        registry.check_servable(CHAT)
    with pytest.raises(NoWorkerAvailable, match="No speech worker is available"):
        registry.check_type_servable("speech")


# --- circuit breaker ------------------------------------------------------------------------


def test_circuit_opens_after_consecutive_failures(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=3, circuit_open_s=30)
    state = registry.get("a")
    assert state is not None
    _fail(registry, "a", 2)
    assert state.circuit(clock.now) == "closed"
    assert registry.can_serve_now(CHAT)
    _fail(registry, "a")
    assert state.circuit(clock.now) == "open"
    assert not registry.can_serve_now(CHAT)
    assert registry.reserve(CHAT) is None
    assert registry.total_capacity() == 0
    # every worker open: refused at once, naming the worker and when it is tried again
    with pytest.raises(WorkerCircuitOpen) as refused:
        registry.check_servable(CHAT)
    assert refused.value.workers == ["a"] and refused.value.retry_in_s == 30
    assert str(refused.value) == (
        "The chat worker a is not answering (circuit open); it will be tried again in 30 s"
    )
    clock.advance(12.5)
    with pytest.raises(WorkerCircuitOpen, match="again in 18 s"):
        registry.check_servable(CHAT)
    assert registry.public()[0]["circuit"] == "open"


def test_an_open_circuit_is_skipped_while_another_worker_is_usable(clock: Clock) -> None:
    registry = _registry(_worker("a", health_score=100), _worker("b", health_score=10))
    _fail(registry, "a", 3)
    registry.check_servable(CHAT)
    picked = registry.reserve(CHAT)
    assert picked is not None and picked.name == "b"


def test_a_passing_probe_closes_the_circuit_and_one_failure_reopens_it(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=3, circuit_open_s=30)
    state = registry.get("a")
    assert state is not None
    woken: list[int] = []
    registry.add_listener(lambda: woken.append(1))
    _fail(registry, "a", 3)
    assert registry.open_circuits() == [state.worker]
    assert woken  # opening wakes the queue consumers, so waiting jobs fail at once
    registry.probe_succeeded("a")
    assert state.circuit(clock.now) == "closed" and registry.can_serve_now(CHAT)
    assert registry.open_circuits() == []
    _fail(registry, "a")  # still failing although /health passes: open again at once
    assert state.circuit(clock.now) == "open"
    registry.report_success("a")
    registry.probe_succeeded("nobody")
    assert state.circuit(clock.now) == "closed" and state.consecutive_failures == 0


def test_a_success_resets_the_failure_streak(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=2)
    state = registry.get("a")
    assert state is not None
    _fail(registry, "a")
    registry.report_success("a")
    _fail(registry, "a")
    assert state.circuit(clock.now) == "closed"
    assert state.consecutive_failures == 1
    assert state.failures_total == 2


def test_half_open_admits_one_trial_and_success_closes(clock: Clock) -> None:
    registry = _registry(_worker("a", max_concurrency=4), circuit_failures=1, circuit_open_s=10)
    state = registry.get("a")
    assert state is not None
    _fail(registry, "a")
    clock.advance(9.9)
    assert registry.reserve(CHAT) is None
    clock.advance(0.2)
    assert state.circuit(clock.now) == "half_open"
    assert registry.reserve(CHAT) is not None  # the trial
    assert registry.reserve(CHAT) is None  # only one trial at a time
    assert not registry.can_serve_now(CHAT)
    registry.report_success("a")
    registry.release("a")
    assert state.circuit(clock.now) == "closed"
    assert [registry.reserve(CHAT) is not None for _ in range(4)] == [True] * 4


def test_failed_trial_reopens_for_the_full_time(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=3, circuit_open_s=10)
    state = registry.get("a")
    assert state is not None
    _fail(registry, "a", 3)
    clock.advance(10)
    assert registry.reserve(CHAT) is not None
    _fail(registry, "a")  # one failure in half-open is enough
    registry.release("a")
    assert state.circuit(clock.now) == "open"
    clock.advance(9.9)
    assert registry.reserve(CHAT) is None
    clock.advance(0.1)
    assert registry.reserve(CHAT) is not None


def test_trial_released_without_a_report_frees_the_trial(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=1, circuit_open_s=1)
    _fail(registry, "a")
    clock.advance(1)
    assert registry.reserve(CHAT) is not None
    registry.release("a")  # e.g. the job's speech step failed before the call
    assert registry.reserve(CHAT) is not None


def test_blacklisted_worker_is_not_available_even_with_closed_circuit(clock: Clock) -> None:
    registry = _registry(_worker("a", is_blacklisted=True))
    assert registry.reserve(CHAT) is None


# --- passive health and kinds of failure ----------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        WorkerUnavailable("5xx", status=500),
        WorkerTimeout("slow"),
        WorkerBadResponse("html"),
    ],
)
def test_failures_lower_health_by_the_error_delta(error: Exception) -> None:
    registry = _registry(_worker("a"), health_error_delta=5)
    registry.report_failure("a", error)
    state = registry.get("a")
    assert state is not None
    assert state.worker.health_score == 95
    assert state.consecutive_failures == 1


def test_passive_failures_blacklist_at_zero_except_imagine() -> None:
    registry = _registry(
        _worker("c", health_score=10),
        _worker("i", "imagine", health_score=10),
        circuit_failures=100,
    )
    for name in ("c", "i"):
        _fail(registry, name, 2)
    chat, imagine = registry.get("c"), registry.get("i")
    assert chat is not None and imagine is not None
    assert chat.worker.health_score == 0 and chat.worker.is_blacklisted
    assert imagine.worker.health_score == 0 and not imagine.worker.is_blacklisted


def test_rate_limit_cools_down_without_health_loss_or_circuit(clock: Clock) -> None:
    registry = _registry(_worker("a"), rate_limit_cooldown_s=5, circuit_failures=1)
    state = registry.get("a")
    assert state is not None
    registry.report_failure("a", WorkerRateLimited("429", status=429))
    assert state.worker.health_score == 100
    assert not state.worker.is_blacklisted
    assert state.circuit(clock.now) == "closed"
    assert state.consecutive_failures == 0
    assert registry.reserve(CHAT) is None
    registry.check_servable(CHAT)  # still servable: it is only cooling down
    clock.advance(5)
    assert registry.reserve(CHAT) is not None


def test_input_rejection_does_not_count_against_the_worker(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=1)
    state = registry.get("a")
    assert state is not None
    registry.report_failure("a", WorkerRejected("bad prompt", status=400))
    assert state.worker.health_score == 100
    assert state.consecutive_failures == 0
    assert state.circuit(clock.now) == "closed"
    assert state.failures_total == 1


def test_config_rejection_counts_against_the_worker(clock: Clock) -> None:
    registry = _registry(_worker("a"), circuit_failures=1)
    state = registry.get("a")
    assert state is not None
    registry.report_failure("a", WorkerRejected("no key", status=401))
    assert state.worker.health_score == 95
    assert state.circuit(clock.now) == "open"


def test_reset_health_one_or_all(clock: Clock) -> None:
    registry = _registry(
        _worker("a", health_score=0, is_blacklisted=True),
        _worker("b", health_score=20),
        circuit_failures=1,
    )
    _fail(registry, "b")
    registry.report_failure("b", WorkerRateLimited("429"))
    changed = registry.reset_health("a")
    assert [w.name for w in changed] == ["a"]
    a, b = registry.get("a"), registry.get("b")
    assert a is not None and b is not None
    assert a.worker.health_score == 100 and not a.worker.is_blacklisted
    assert b.circuit(clock.now) == "open"
    changed = registry.reset_health()
    assert sorted(w.name for w in changed) == ["a", "b"]
    assert b.worker.health_score == 100
    assert b.circuit(clock.now) == "closed" and b.consecutive_failures == 0
    assert registry.reserve(CHAT, exclude=["a"]) is not None
    assert registry.reset_health("nobody") == []


def test_listeners_hear_of_capacity_changes() -> None:
    registry = _registry(_worker("a"))
    heard: list[int] = []
    registry.add_listener(lambda: heard.append(1))
    registry.reserve(CHAT)
    registry.release("a")
    registry.reset_health()
    registry.add(_worker("b"))
    registry.remove("b")
    assert len(heard) == 4
