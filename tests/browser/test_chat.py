"""Chat in the browser: answers, cost, hostile prompts, a phone-sized screen."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.browser.helpers import answer_text, ask, record_dialogs, total_cost
from tests.support.servers import BrokerServer

pytestmark = pytest.mark.browser


def test_chat_answer_appears_and_total_cost_grows(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker)
    expect(page.locator("#total-cost")).to_have_text("$0.0000")

    turn = ask(page, "What is a realm broker?")
    expect(answer_text(turn)).to_contain_text("What is a realm broker?")
    expect(answer_text(turn)).to_contain_text("[demo chat]")
    expect(page.locator("#total-cost")).not_to_have_text("$0.0000")
    first = total_cost(page)
    assert first > 0

    turn = ask(page, "And who pays for it?")
    expect(answer_text(turn)).to_contain_text("And who pays for it?")
    expect(page.locator("#total-cost")).not_to_have_text(f"${first:.4f}")
    assert total_cost(page) > first
    expect(page.locator("#pending-list .pending-query")).to_have_count(0)
    # the totals come with each result (no user_info follows it): the user box counts both
    queries = page.locator("#user-info dt", has_text="Queries").locator(
        "xpath=following-sibling::dd[1]"
    )
    expect(queries).to_have_text("2")


def test_markup_in_a_prompt_is_shown_as_text_and_runs_nothing(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker)
    dialogs = record_dialogs(page)
    hostile = "<img src=x onerror=alert(1)>"

    turn = ask(page, hostile)
    expect(answer_text(turn)).to_contain_text(hostile)
    # the prompt comes back in the history list and, after a reload, in the welcome messages
    expect(page.locator("#history .history-prompt").first).to_have_text(hostile)
    assert page.locator('#conversation img[src="x"]').count() == 0
    assert page.locator('img[src="x"]').count() == 0

    page.reload()
    expect(page.locator('#connection-state[data-state="connected"]')).to_be_visible()
    expect(page.locator("#messages")).to_contain_text(hostile[:30])
    expect(page.locator("#history .history-prompt").first).to_have_text(hostile)
    assert page.locator('img[src="x"]').count() == 0
    assert dialogs == []


def test_a_phone_sized_screen_can_send_a_chat_query(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    turn = ask(page, "Hello from a phone", keyboard=False)
    expect(answer_text(turn)).to_contain_text("Hello from a phone")
    expect(turn.locator(".answer")).to_be_in_viewport()
    # nothing is wider than the screen: no sideways scrolling
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
