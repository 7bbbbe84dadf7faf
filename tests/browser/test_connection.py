"""Queueing and the connection: cancelling a waiting query, a broker restarted under the page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.browser.helpers import answer_text, ask
from tests.support.servers import (
    BrokerServer,
    demo_worker_records,
    reference_worker,
    worker_stats,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def slow_chat_worker() -> Iterator[str]:
    """A chat worker that takes 3 s per answer and runs one at a time."""
    with reference_worker(latency_ms=3000, max_concurrency=1) as address:
        yield address


def test_cancelling_a_queued_query(
    broker_factory: Callable[..., BrokerServer], slow_chat_worker: str, open_page: OpenPage
) -> None:
    server = broker_factory(demo_worker_records({"chat": slow_chat_worker}, max_concurrency=1))
    page = open_page(server)

    first = ask(page, "first, slow")
    second = ask(page, "second, to be cancelled")
    pending = page.locator("#pending-list .pending-query")
    waiting = pending.filter(has_text="second, to be cancelled")
    # the first runs on the only worker slot, the second waits behind it
    expect(waiting).to_have_attribute("data-state", "queued")
    expect(waiting.locator(".cancel-query")).to_be_enabled()
    waiting.locator(".cancel-query").click()

    expect(second.locator(".answer-note")).to_have_text("Cancelled.")
    expect(waiting).to_have_count(0)
    expect(answer_text(first)).to_contain_text("first, slow")
    expect(pending).to_have_count(0)
    expect(page.locator("#queue-depth")).to_have_attribute("data-depth", "0")
    expect(page.locator("#conversation .answer")).to_have_count(1)
    expect(second.locator(".answer, .answer-error")).to_have_count(0)
    # the worker only ever saw the first query
    assert worker_stats(slow_chat_worker)["requests_total"] == 1


@pytest.fixture
def start_again() -> Iterator[Callable[[BrokerServer], BrokerServer]]:
    """Start a new broker on the port and with the settings of a stopped one.

    Requested before ``open_page``, so the new broker outlives the page's final screenshot.
    """
    started: list[BrokerServer] = []

    def start_again_(server: BrokerServer) -> BrokerServer:
        again = BrokerServer(server.settings, port=server.port)
        again.start()
        started.append(again)
        return again

    yield start_again_
    for server in started:
        server.stop()


def test_the_page_reconnects_to_a_restarted_broker(
    broker: BrokerServer,
    start_again: Callable[[BrokerServer], BrokerServer],
    open_page: OpenPage,
) -> None:
    page = open_page(broker)
    state = page.locator("#connection-state")
    turn = ask(page, "before the restart")
    expect(answer_text(turn)).to_contain_text("before the restart")

    broker.stop()
    expect(state).to_have_attribute("data-state", "reconnecting")
    expect(state).to_have_text("reconnecting")
    expect(page.locator("#reconnect-info")).to_contain_text("retry")

    start_again(broker)
    expect(state).to_have_attribute("data-state", "connected")
    expect(state).to_have_text("connected")
    turn = ask(page, "after the restart")
    expect(answer_text(turn)).to_contain_text("after the restart")
    # the same user (cookie) on the new broker, which reads the same database
    expect(page.locator("#history .history-item")).to_have_count(2)


def test_a_query_lost_in_a_restart_is_reported(
    broker_factory: Callable[..., BrokerServer],
    slow_chat_worker: str,
    start_again: Callable[[BrokerServer], BrokerServer],
    open_page: OpenPage,
) -> None:
    server = broker_factory(demo_worker_records({"chat": slow_chat_worker}, max_concurrency=1))
    page = open_page(server)
    turn = ask(page, "running when the broker stops")
    entry = page.locator("#pending-list .pending-query").filter(has_text="running when")
    # it has reached the broker (the page knows its job id) before the restart
    expect(entry).to_have_attribute("data-job-id", re.compile(r"\w+"))

    server.stop()  # the embedded memory queue goes with the process
    start_again(server)
    expect(page.locator("#connection-state")).to_have_attribute("data-state", "connected")
    expect(turn.locator(".answer-note")).to_contain_text("lost while the server restarted")
    expect(page.locator("#pending-list .pending-query")).to_have_count(0)
    # the page goes on working on the new broker
    after = ask(page, "after the restart")
    expect(answer_text(after)).to_contain_text("after the restart", timeout=20_000)
