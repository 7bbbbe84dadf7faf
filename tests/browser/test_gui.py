"""The whole GUI: it runs under its Content-Security-Policy, and the README screenshot."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from rentahal.api.security import CONTENT_SECURITY_POLICY, add_security_headers
from tests.browser.conftest import ROOT, SCREENSHOTS, OpenPage
from tests.browser.helpers import answer_text, ask, choose_image, noisy_png
from tests.support.servers import BrokerServer, broker_settings, demo_worker_records, seed

pytestmark = pytest.mark.browser

README_SCREENSHOT = ROOT / "docs" / "screenshots" / "gui.png"
# The committed README screenshot is only rewritten when missing or asked for, so that test
# runs do not leave a modified tracked file behind.
UPDATE_README_SCREENSHOT = os.environ.get("RENTAHAL_UPDATE_SCREENSHOTS") == "1"
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest.fixture
def secured_broker(tmp_path: Path, ref_workers: dict[str, str]) -> Iterator[BrokerServer]:
    """A broker whose app sends the security headers (whether or not create_app adds them)."""
    settings = broker_settings(tmp_path)
    seed(settings, demo_worker_records(ref_workers))
    server = BrokerServer(settings)
    add_security_headers(server.app)
    server.start()
    yield server
    server.stop()


def test_the_page_works_under_its_content_security_policy(
    secured_broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(secured_broker)
    page.add_init_script(RECORD_VIOLATIONS)
    response = page.reload()
    assert response is not None
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(page.locator('#connection-state[data-state="connected"]')).to_be_visible()

    turn = ask(page, "Is **this** _markdown_?")
    expect(answer_text(turn)).to_contain_text("markdown")
    turn = ask(page, "a red square", "imagine")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0",
        arg=turn.locator("img.answer-image").element_handle(),
    )
    page.select_option("#query-type", "vision")
    choose_image(page, "small.png", noisy_png(64, 48))
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 64",
        arg=page.locator("#vision-preview").element_handle(),
    )
    turn = ask(page, "and this?", "vision")
    expect(answer_text(turn)).to_contain_text("64x48")
    page.locator("#theme-toggle").click()
    expect(page.locator("#theme-toggle")).to_have_text("Theme: light")

    assert page.evaluate("() => window.__cspViolations") == []
    # FastAPI's docs page loads Swagger UI from a CDN: it is left without the policy
    docs = httpx.get(f"{secured_broker.url}/docs", timeout=5)
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-content-type-options"] == "nosniff"


def test_readme_screenshot_of_the_gui(broker: BrokerServer, open_page: OpenPage) -> None:
    """``docs/screenshots/gui.png``; ``RENTAHAL_UPDATE_SCREENSHOTS=1`` rewrites it."""
    # tall enough to show the generated image under the chat answer
    page = open_page(broker, viewport={"width": 1280, "height": 1400})
    page.locator("#nickname").fill("ada")
    page.locator("#nickname-save").click()
    expect(page.locator("#user-nick")).to_have_text("ada")
    # the sysop's own lists follow the rename
    expect(page.locator("#active-users")).to_contain_text("ada (")
    guid = page.evaluate("() => window.rentahal.state.user.guid")
    expect(page.locator(f'#users-table tr[data-guid="{guid}"] td').first).to_have_text("ada")

    turn = ask(page, "What does RENT-A-HAL do?")
    expect(answer_text(turn)).to_contain_text("What does RENT-A-HAL do?")
    turn = ask(page, "a lighthouse at dusk, oil painting", "imagine")
    image = turn.locator("img.answer-image")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    page.select_option("#query-type", "chat")
    page.locator("#prompt").fill("")
    page.locator("#prompt").blur()
    page.evaluate("() => window.scrollTo(0, 0)")
    expect(page.locator("#queue-depth")).to_have_attribute("data-depth", "0")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "gui.png"
    page.screenshot(path=str(shot), animations="disabled", caret="hide")
    assert shot.stat().st_size > 10_000
    if UPDATE_README_SCREENSHOT or not README_SCREENSHOT.exists():
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)
