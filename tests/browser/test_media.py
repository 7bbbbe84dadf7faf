"""Vision uploads and imagined images in the browser."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OpenPage
from tests.browser.helpers import answer_text, ask, choose_image, noisy_png
from tests.support.servers import BrokerServer

pytestmark = pytest.mark.browser


def test_vision_upload_is_answered_with_the_preprocessed_size(
    broker: BrokerServer, open_page: OpenPage
) -> None:
    page = open_page(broker)
    page.select_option("#query-type", "vision")
    expect(page.locator("#vision-box")).to_be_visible()
    # random pixels: about 1.4 MB of PNG, so the upload takes two 1 MiB chunks
    image = noisy_png(800, 600)
    choose_image(page, "noise.png", image)
    expect(page.locator("#vision-preview")).to_be_visible()
    expect(page.locator("#vision-file-name")).to_have_text("noise.png")

    turn = ask(page, "What size is this picture?", "vision")
    expect(turn.locator("img.question-image")).to_be_visible()
    expect(answer_text(turn)).to_contain_text("512x384")
    expect(answer_text(turn)).to_contain_text("What size is this picture?")

    progress = page.locator("#vision-progress")
    expect(progress).to_have_attribute("data-total", "2")
    expect(progress).to_have_attribute("data-received", "2")
    assert progress.evaluate("bar => bar.value === bar.max && bar.position === 1")
    expect(page.locator("#pending-list .pending-query")).to_have_count(0)


def test_imagine_shows_a_decoded_image(broker: BrokerServer, open_page: OpenPage) -> None:
    page = open_page(broker)
    turn = ask(page, "a lighthouse at dusk", "imagine")
    image = turn.locator("img.answer-image")
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    assert image.evaluate("img => img.naturalWidth") > 0
    expect(turn.locator("a.answer-download")).to_have_attribute(
        "download", re.compile(r"^rentahal-[\w-]+\.png$")
    )
