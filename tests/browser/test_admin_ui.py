"""The sysop console manages pools and realms through forms and table buttons."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import OpenPage
from tests.support.servers import BrokerServer

pytestmark = pytest.mark.browser

FETCH_JSON = "async (url) => { const r = await fetch(url); return [r.status, await r.json()]; }"


def admin_get(page: Page, path: str) -> Any:
    """GET an admin API path with the page's (sysop's) cookie."""
    status, body = page.evaluate(FETCH_JSON, path)
    assert status == 200, body
    return body


def test_a_sysop_creates_a_pool_from_the_form(broker: BrokerServer, open_page: OpenPage) -> None:
    page = open_page(broker)
    expect(page.locator("#sysop-panel")).to_be_visible()
    form = page.locator("#pool-form")
    # the member choices are the live workers of the chosen type
    form.locator('select[name="query_type"]').select_option("chat")
    members = form.locator('select[name="members"] option')
    expect(members).to_have_text(["ref-chat"])
    form.locator('select[name="query_type"]').select_option("imagine")
    expect(members).to_have_text(["ref-imagine"])
    form.locator('select[name="query_type"]').select_option("chat")

    # markup is refused as a name, and the refusal is shown as text
    form.locator('input[name="name"]').fill("fast<img src=x>")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#pools-admin-error")).to_contain_text("a pool name is letters")
    assert page.locator('#sysop-panel img[src="x"]').count() == 0

    form.locator('input[name="name"]').fill("fast")
    form.locator('select[name="members"]').select_option(["ref-chat"])
    form.locator('select[name="strategy"]').select_option("least_busy")
    form.locator('select[name="realm"]').select_option("$CHAT")
    form.locator('button[type="submit"]').click()

    row = page.locator('#pools-table tbody tr[data-name="fast"]')
    expect(row.locator(".pool-name")).to_have_text("fast")
    expect(row.locator(".pool-type")).to_have_text("chat")
    expect(row.locator(".pool-realm")).to_have_text("$CHAT")
    expect(row.locator(".pool-members")).to_have_text("ref-chat")
    expect(row.locator(".pool-strategy")).to_have_text("least_busy")
    expect(row.locator(".pool-blacklisted")).to_have_text("no")
    assert page.locator('#pools-table img[src="x"]').count() == 0
    expect(page.locator("#pools-admin-error")).to_have_text("")
    # the form is ready for the next pool
    expect(form.locator('input[name="name"]')).to_have_value("")

    pools = admin_get(page, "/api/admin/pools")["pools"]
    assert pools == [
        {
            "name": "fast",
            "query_type": "chat",
            "realm": "$CHAT",
            "members": ["ref-chat"],
            "strategy": "least_busy",
            "blacklisted": False,
        }
    ]

    # edit: blacklist it; the row follows
    row.locator(".edit-pool").click()
    expect(form.locator('input[name="name"]')).to_have_value("fast")
    expect(form.locator('select[name="members"]')).to_have_values(["ref-chat"])
    form.locator('input[name="blacklisted"]').check()
    form.locator('button[type="submit"]').click()
    expect(row.locator(".pool-blacklisted")).to_have_text("yes")
    assert admin_get(page, "/api/admin/pools")["pools"][0]["blacklisted"] is True

    # a second pool with the same name is refused inline
    form.locator('input[name="name"]').fill("fast")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#pools-admin-error")).to_contain_text("already exists")

    row.locator(".delete-pool").click()
    expect(row).to_have_count(0)
    assert admin_get(page, "/api/admin/pools")["pools"] == []


def test_a_sysop_creates_stops_resumes_and_deletes_a_realm(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker)
    expect(page.locator("#sysop-panel")).to_be_visible()
    primary = page.locator('#realms-table tbody tr[data-name="$CHAT"]')
    expect(primary.locator(".badge-primary")).to_have_text("primary")
    expect(primary.locator(".realm-state")).to_have_text("running")
    expect(primary.locator(".realm-worker-names")).to_have_text("ref-chat")
    # a primary realm cannot be deleted; the button says why
    delete_primary = primary.locator(".delete-realm")
    expect(delete_primary).to_be_disabled()
    expect(delete_primary).to_have_attribute(
        "title", "A primary realm serves its query type and cannot be deleted."
    )

    form = page.locator("#realm-form")
    # a name without "$" is refused with the server's detail, shown inline
    form.locator('input[name="name"]').fill("CHAT2")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#realms-admin-error")).to_contain_text("a realm name is '$' then")
    # so is min > max
    form.locator('input[name="name"]').fill("$CHAT2")
    form.locator('input[name="min_workers"]').fill("5")
    form.locator('input[name="max_workers"]').fill("2")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#realms-admin-error")).to_contain_text("min_workers")

    form.locator('select[name="primary_query_type"]').select_option("chat")
    form.locator('input[name="min_workers"]').fill("0")
    form.locator('input[name="max_workers"]').fill("3")
    form.locator('select[name="strategy"]').select_option("round_robin")
    form.locator('input[name="queue_threshold"]').fill("7")
    form.locator('select[name="backup_realms"]').select_option(["$VISION"])
    form.locator('input[name="description"]').fill("overflow <i>chat</i>")
    form.locator('button[type="submit"]').click()

    row = page.locator('#realms-table tbody tr[data-name="$CHAT2"]')
    expect(row.locator(".realm-type")).to_have_text("chat")
    expect(row.locator(".realm-bounds")).to_have_text("0\u20133")
    expect(row.locator(".realm-strategy")).to_have_text("round_robin")
    expect(row.locator(".realm-backups")).to_have_text("$VISION")
    expect(row.locator(".realm-threshold")).to_have_text("7")
    expect(row.locator(".admin-description")).to_have_text("overflow <i>chat</i>")
    expect(row.locator(".realm-state")).to_have_text("running")
    expect(row.locator(".badge-primary")).to_have_count(0)
    expect(page.locator("#realms-admin-error")).to_have_text("")
    assert page.locator("#realms-table i").count() == 0
    realms = {r["name"]: r for r in admin_get(page, "/api/admin/realms")["realms"]}
    assert realms["$CHAT2"]["backup_realms"] == ["$VISION"]
    assert realms["$CHAT2"]["queue_threshold"] == 7
    assert realms["$CHAT2"]["is_primary"] is False

    row.locator(".stop-realm").click()
    expect(row.locator(".realm-state")).to_have_text("stopped")
    realms = {r["name"]: r for r in admin_get(page, "/api/admin/realms")["realms"]}
    assert realms["$CHAT2"]["stopped"] is True
    row.locator(".resume-realm").click()
    expect(row.locator(".realm-state")).to_have_text("running")

    expect(row.locator(".delete-realm")).to_be_enabled()
    row.locator(".delete-realm").click()
    expect(row).to_have_count(0)
    names = [r["name"] for r in admin_get(page, "/api/admin/realms")["realms"]]
    assert "$CHAT2" not in names
    assert "$CHAT" in names
    expect(page.locator("#realms-admin-error")).to_have_text("")


def test_a_refusal_stays_shown_when_the_panel_reloads(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    # The panel loads realms and pools when it opens (and on Refresh); a load that ends
    # after the sysop's action must not wipe the refusal the action just showed.
    page = open_page(broker)
    expect(page.locator("#sysop-panel")).to_be_visible()
    form = page.locator("#pool-form")
    form.locator('input[name="name"]').fill("bad name!")
    form.locator('button[type="submit"]').click()
    error = page.locator("#pools-admin-error")
    expect(error).to_contain_text("a pool name is letters")
    with page.expect_response(lambda r: r.url.endswith("/api/admin/pools")):
        page.locator("#refresh-stats").click()
    page.evaluate("() => new Promise((done) => setTimeout(done, 300))")  # the load has ended
    assert "a pool name is letters" in (error.text_content() or "")
