"""The sysop console and the realm dashboard show the scaler's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.support.servers import BrokerServer, broker_settings

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


def test_scaler_events_in_the_console_and_the_dashboard(
    tmp_path: Path, open_page: OpenPage, ref_workers: dict[str, str]
) -> None:
    doc = {
        "scaling": {"interval_s": 0.3},
        "realms": {
            "$CHAT": {
                "primary_query_type": "chat",
                "min_workers": 1,
                "max_workers": 2,
                "provisioner": {"static": [ref_workers["chat"]]},
            }
        },
    }
    (tmp_path / "realms.yml").write_text(yaml.safe_dump(doc))
    server = BrokerServer(broker_settings(tmp_path))
    server.start()
    try:
        page = open_page(server)
        expect(page.locator("#sysop-panel")).to_be_visible()
        # The dashboard polls the summary: the start shows up there.
        expect(page.locator("#scaler-events")).to_contain_text("$CHAT added: auto-chat-")
        expect(page.locator("#scaler-events")).to_contain_text("below min_workers")
        page.locator("#refresh-stats").click()
        events = page.locator("#sysop-scaler-events")
        expect(events).to_contain_text("scale_up: below min_workers")
        expect(events).to_contain_text("(workers 0, utilisation")
        assert ref_workers["chat"] not in (page.locator("#scaler-events").text_content() or "")
    finally:
        server.stop()
