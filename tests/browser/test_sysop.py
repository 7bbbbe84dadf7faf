"""The sysop console bans a user; the realm dashboard counts answers."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.browser.helpers import answer_text, ask, record_dialogs
from tests.support.servers import BrokerServer

pytestmark = pytest.mark.browser


def test_a_sysop_bans_a_user_from_the_console(broker: BrokerServer, open_page: OpenPage) -> None:
    # the first user of a fresh database is the sysop
    sysop = open_page(broker, name="sysop")
    expect(sysop.locator("#sysop-panel")).to_be_visible()
    user = open_page(broker, name="user")
    expect(user.locator("#sysop-panel")).to_be_hidden()
    expect(user.locator("#banned-banner")).to_be_hidden()
    guid = user.evaluate("() => window.rentahal.state.user.guid")
    dialogs = record_dialogs(sysop)
    # a nickname with markup is shown to the sysop as text
    nickname = "<img src=x onerror=alert(1)>"
    user.locator("#nickname").fill(nickname)
    user.locator("#nickname-save").click()
    expect(user.locator("#user-nick")).to_have_text(nickname)

    sysop.locator("#refresh-stats").click()
    row = sysop.locator(f'#users-table tr[data-guid="{guid}"]')
    expect(row.locator("td").first).to_have_text(nickname)
    expect(sysop.locator("#active-users")).to_contain_text(nickname)
    assert sysop.locator('img[src="x"]').count() == 0
    expect(row.locator(".user-status")).to_have_text("ok")
    row.locator(".ban-user").click()

    expect(user.locator("#banned-banner")).to_be_visible()
    expect(user.locator("#banned-banner")).to_contain_text("You are banned")
    expect(user.locator("#send")).to_be_disabled()
    expect(user.locator("#prompt")).to_be_disabled()
    expect(user.locator("#mic")).to_be_disabled()
    expect(user.locator("#nickname-save")).to_be_disabled()
    expect(row.locator(".user-status")).to_have_text("banned")
    expect(row.locator(".unban-user")).to_be_visible()
    # the sysop is untouched
    expect(sysop.locator("#banned-banner")).to_be_hidden()
    turn = ask(sysop, "still here")
    expect(answer_text(turn)).to_contain_text("still here")
    assert dialogs == []


def test_the_realm_dashboard_counts_processed_queries(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker)
    processed = page.locator('#dashboard .realm-card[data-realm="$CHAT"] .realm-processed')
    expect(processed).to_be_visible()
    expect(processed).to_have_text("0")

    turn = ask(page, "count me")
    expect(answer_text(turn)).to_contain_text("count me")
    expect(processed).to_have_text("1")

    turn = ask(page, "and me")
    expect(answer_text(turn)).to_contain_text("and me")
    expect(processed).to_have_text("2")
    # two answers since the page opened: two in the last minute, not a rate extrapolated
    # from a few seconds
    card = page.locator('#dashboard .realm-card[data-realm="$CHAT"]')
    expect(card.locator(".realm-throughput")).to_have_text("2")
