"""The collector while a node serves: start-up objects frozen, young threshold raised."""

from __future__ import annotations

import gc
from pathlib import Path

from rentahal.heap import serving_heap


def test_serving_tunes_the_collector_and_restores_it() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    with serving_heap(7000):
        assert gc.get_threshold() == (7000, before[1], before[2])
        assert gc.get_freeze_count() > frozen_before
        made_while_serving: list[list[int]] = [[] for _ in range(10)]
        # Objects made while serving are tracked as usual (not frozen).
        assert gc.is_tracked(made_while_serving)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_nested_users_restore_only_when_the_last_leaves() -> None:
    before = gc.get_threshold()
    with serving_heap(5000):
        with serving_heap(9000):  # a second app in the same process
            assert gc.get_threshold()[0] == 5000
        assert gc.get_threshold()[0] == 5000
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    with serving_heap(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_cycles_made_while_serving_are_still_collected() -> None:
    class Node:
        other: Node | None = None

    with serving_heap(7000):
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2


def test_a_serving_broker_runs_with_the_configured_threshold(tmp_path: Path) -> None:
    from tests.support.servers import BrokerServer, broker_settings

    before = gc.get_threshold()
    server = BrokerServer(broker_settings(tmp_path, performance={"gc_young_threshold": 4321}))
    server.start()
    try:
        assert gc.get_threshold()[0] == 4321
        assert gc.get_freeze_count() > 0
    finally:
        server.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
