"""Pool strategies pick as their names promise."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rentahal.models import AIWorker
from rentahal.realms.strategies import (
    HealthStrategy,
    LeastBusyStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    make_strategy,
)
from rentahal.realms.workers import WorkerState


def _state(name: str, health: float = 100.0, in_flight: int = 0, cap: int = 4) -> WorkerState:
    worker = AIWorker(name=name, address="127.0.0.1:1", health_score=health, max_concurrency=cap)
    return WorkerState(worker=worker, in_flight=in_flight)


def test_round_robin_alternates_exactly() -> None:
    states = [_state("a"), _state("b"), _state("c")]
    rr = RoundRobinStrategy()
    picks = [rr.pick(states).worker.name for _ in range(9)]
    assert picks == ["a", "b", "c"] * 3


def test_round_robin_skips_busy_member_and_resumes() -> None:
    a, b, c = _state("a"), _state("b"), _state("c")
    rr = RoundRobinStrategy()
    assert rr.pick([a, b, c]).worker.name == "a"
    assert rr.pick([a, c]).worker.name == "c"  # b not free: the next after a is c
    assert rr.pick([a, b, c]).worker.name == "a"  # wraps around


def test_least_busy_never_picks_busy_while_idle_exists() -> None:
    rng = random.Random(7)
    for _ in range(200):
        states = [_state(f"w{i}", in_flight=rng.randint(0, 3)) for i in range(5)]
        states.append(_state("idle", in_flight=0, health=rng.uniform(1, 100)))
        chosen = LeastBusyStrategy().pick(states)
        assert chosen.in_flight == 0


def test_health_prefers_healthiest_then_least_loaded() -> None:
    assert HealthStrategy().pick([_state("a", 50), _state("b", 90)]).worker.name == "b"
    tie = [_state("a", 90, in_flight=2), _state("b", 90, in_flight=1)]
    assert HealthStrategy().pick(tie).worker.name == "b"


def test_random_reaches_every_member() -> None:
    states = [_state(n) for n in "abcd"]
    strategy = RandomStrategy(random.Random(1))
    counts = Counter(strategy.pick(states).worker.name for _ in range(400))
    assert set(counts) == set("abcd")
    assert min(counts.values()) > 50


def test_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        make_strategy("fastest")
