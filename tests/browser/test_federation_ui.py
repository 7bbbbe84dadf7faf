"""The sysop console lists federation peers and approves, blocks and removes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.integration.test_federation_admission import _admin, _identity, _start

pytestmark = pytest.mark.browser


def test_a_sysop_approves_a_waiting_peer(tmp_path: Path, open_page: OpenPage) -> None:
    guarded = _start(tmp_path / "guarded", "approval")
    joiner = _start(tmp_path / "joiner", "token")
    try:
        joiner_id = _identity(joiner).federation_id
        assert _admin(
            joiner, "POST", "/api/admin/federation/join", {"url": guarded.url}
        ).json() == {"status": "pending"}
        page = open_page(guarded)
        expect(page.locator("#sysop-panel")).to_be_visible()
        row = page.locator(f'#federation-table tbody tr[data-peer="{joiner_id}"]')
        expect(row.locator("td").nth(2)).to_have_text("pending")
        expect(row.locator("td").nth(1)).to_have_text(joiner.url)
        row.get_by_role("button", name="Approve").click()
        expect(row.locator("td").nth(2)).to_have_text("active")
        row.get_by_role("button", name="Block").click()
        expect(row.locator("td").nth(2)).to_have_text("blocked")
        row.get_by_role("button", name="Remove").click()
        expect(page.locator("#federation-table tbody")).to_contain_text("No peers yet.")
        expect(page.locator("#federation-summary")).to_contain_text("trust: approval")
    finally:
        joiner.stop()
        guarded.stop()
