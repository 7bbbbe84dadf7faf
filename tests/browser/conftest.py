"""Browser fixtures: one headless Chromium per package, a fresh context and page per test.

Every test's page is screenshotted into ``test-artifacts/screenshots/<test name>.png`` when
the test ends (pass or fail), so CI can keep what the page showed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.support.servers import BrokerServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
# Long enough for a query through a worker process; short enough to fail fast.
EXPECT_TIMEOUT_MS = 15_000

OpenPage = Callable[..., Page]

expect.set_options(timeout=EXPECT_TIMEOUT_MS)


def screenshot_name(nodeid: str) -> str:
    """A file name for a test id (``test_x[param]`` -> ``test_x-param``)."""
    name = nodeid.split("::")[-1]
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "test"


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """The sync Playwright driver (package scope: no asyncio loop runs in these tests)."""
    with sync_playwright() as driver:
        driver.selectors.set_test_id_attribute("data-testid")
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """The system Chromium, headless."""
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
    )
    yield chromium
    chromium.close()


@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[OpenPage]:
    """Open pages in fresh contexts (own cookies, so own users); screenshot them at the end.

    ``open_page(server, viewport=..., name=...)`` loads the broker's GUI and waits until the
    page's socket is connected. The first page's screenshot is named after the test, further
    pages get ``-<name>`` appended. An uncaught JavaScript error in any page fails the test.
    """
    opened: list[tuple[BrowserContext, Page, str]] = []
    page_errors: list[str] = []
    base = screenshot_name(request.node.nodeid)

    def open_(
        server: BrokerServer,
        *,
        viewport: ViewportSize | None = None,
        name: str | None = None,
        **context_options: Any,
    ) -> Page:
        context = browser.new_context(viewport=viewport or DESKTOP, **context_options)
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        page = context.new_page()
        page.on("pageerror", lambda error: page_errors.append(f"{error.name}: {error.message}"))
        suffix = f"-{name}" if name else ("" if not opened else f"-{len(opened) + 1}")
        opened.append((context, page, base + suffix))
        page.goto(server.url + "/")
        wait_connected(page)
        return page

    yield open_
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for context, page, name in opened:
        try:
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        finally:
            context.close()
    if page_errors:
        pytest.fail(f"uncaught errors in the page: {page_errors}")


def wait_connected(page: Page) -> None:
    """Wait until the page says it is connected and has its user (the connect sequence ran)."""
    page.wait_for_selector('#connection-state[data-state="connected"]')
    page.wait_for_function("() => Boolean(window.rentahal?.state?.user?.guid)")
