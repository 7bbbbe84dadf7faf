"""Load-balancing strategies of worker pools: health, round robin, least busy, random."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rentahal.realms.workers import WorkerState

STRATEGY_NAMES = ("health", "round_robin", "least_busy", "random")


class Strategy(Protocol):
    """Picks one of several free workers (the list is never empty)."""

    name: str

    def pick(self, states: list[WorkerState]) -> WorkerState:
        """The worker to use."""
        ...


def _load(state: WorkerState) -> float:
    return state.in_flight / state.worker.max_concurrency


class HealthStrategy:
    """Healthiest first; among equals the least loaded (the original's choice)."""

    name = "health"

    def pick(self, states: list[WorkerState]) -> WorkerState:
        return max(states, key=lambda s: (s.worker.health_score, -_load(s), s.worker.name))


class LeastBusyStrategy:
    """Fewest calls in flight relative to capacity; health breaks ties."""

    name = "least_busy"

    def pick(self, states: list[WorkerState]) -> WorkerState:
        return min(states, key=lambda s: (_load(s), -s.worker.health_score, s.worker.name))


class RoundRobinStrategy:
    """Each free member in turn, in name order, resuming after the last one picked."""

    name = "round_robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def pick(self, states: list[WorkerState]) -> WorkerState:
        ordered = sorted(states, key=lambda s: s.worker.name)
        chosen = ordered[0]
        if self._last is not None:
            after = [s for s in ordered if s.worker.name > self._last]
            if after:
                chosen = after[0]
        self._last = chosen.worker.name
        return chosen


class RandomStrategy:
    """Uniformly random among free members."""

    name = "random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, states: list[WorkerState]) -> WorkerState:
        return self._rng.choice(states)


def make_strategy(name: str) -> Strategy:
    """A fresh strategy object (round robin keeps its own position)."""
    factories: dict[str, type[Strategy]] = {
        "health": HealthStrategy,
        "round_robin": RoundRobinStrategy,
        "least_busy": LeastBusyStrategy,
        "random": RandomStrategy,
    }
    try:
        return factories[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGY_NAMES)}") from None
