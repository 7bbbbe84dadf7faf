"""What a person does on the page, as small functions the browser tests share."""

from __future__ import annotations

import io
import random

from PIL import Image
from playwright.sync_api import Dialog, FilePayload, Locator, Page, expect


def ask(page: Page, prompt: str, query_type: str = "chat", *, keyboard: bool = True) -> Locator:
    """Type ``prompt`` as a ``query_type`` query and send it; returns the new conversation turn.

    ``keyboard`` sends with Ctrl+Enter, otherwise by clicking Send (as on a phone).
    """
    if page.locator("#query-type").input_value() != query_type:
        page.select_option("#query-type", query_type)
    turns = page.locator("#conversation .turn")
    before = turns.count()
    page.locator("#prompt").fill(prompt)
    if keyboard:
        page.locator("#prompt").press("Control+Enter")
    else:
        page.locator("#send").click()
    expect(turns).to_have_count(before + 1)
    turn = turns.nth(before)
    if prompt:
        expect(turn.locator(".question-text")).to_have_text(prompt)
    return turn


def answer_text(turn: Locator) -> Locator:
    """The text of the answer in ``turn``."""
    return turn.locator(".answer .answer-text")


def total_cost(page: Page) -> float:
    """The cumulative cost the page shows (``$0.0123`` -> 0.0123)."""
    return float(page.locator("#total-cost").inner_text().lstrip("$"))


def noisy_png(width: int, height: int, seed: int = 7) -> bytes:
    """A PNG of ``width`` x ``height`` that compresses badly (random pixels, fixed seed)."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    image = Image.frombytes("RGB", (width, height), pixels)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def record_dialogs(page: Page) -> list[str]:
    """Dismiss every alert/confirm/prompt ``page`` opens; returns the list of their messages."""
    messages: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        messages.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return messages


def choose_image(page: Page, name: str, png: bytes) -> None:
    """Pick ``png`` in the vision file input, as if chosen in the file dialog."""
    payload: FilePayload = {"name": name, "mimeType": "image/png", "buffer": png}
    page.locator("#vision-file").set_input_files(files=[payload])
