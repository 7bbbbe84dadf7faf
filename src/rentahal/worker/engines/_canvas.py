"""Deterministic demo pictures: a prompt-seeded gradient with shapes and the prompt drawn on."""

from __future__ import annotations

import hashlib
import io
import random
import textwrap

from PIL import Image, ImageDraw, ImageFont


def prompt_seed(prompt: str, seed: int) -> int:
    """A 64-bit seed from the prompt; a ``seed`` of -1 means "from the prompt alone"."""
    key = prompt if seed < 0 else f"{prompt}\x00{seed}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def render_png(prompt: str, width: int, height: int, seed: int) -> bytes:
    """A PNG of ``width`` x ``height``; the same arguments always give the same bytes."""
    rng = random.Random(prompt_seed(prompt, seed))
    start, end = _colour(rng), _colour(rng)
    # Crop the rotated 256x256 gradient to its inner square so no corner is left blank.
    mask = Image.linear_gradient("L").rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR)
    mask = mask.crop((38, 38, 218, 218))
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    image = Image.composite(
        Image.new("RGB", (width, height), start), Image.new("RGB", (width, height), end), mask
    )

    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        size = rng.randint(max(4, min(width, height) // 10), max(8, min(width, height) // 2))
        box = (x0 - size // 2, y0 - size // 2, x0 + size // 2, y0 + size // 2)
        fill = (*_colour(rng), rng.randint(60, 160))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    image = Image.alpha_composite(image.convert("RGBA"), overlay)

    _draw_caption(image, prompt)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _draw_caption(image: Image.Image, prompt: str) -> None:
    width, height = image.size
    font_size = max(10, min(width, height) // 20)
    font = ImageFont.load_default(size=font_size)
    chars_per_line = max(8, int(width / (font_size * 0.6)) - 2)
    lines = textwrap.wrap(prompt, chars_per_line)[: max(1, height // (font_size * 3))]
    lines.append("[demo image]")
    draw = ImageDraw.Draw(image)
    y = font_size // 2
    for line in lines:
        draw.text((font_size // 2 + 1, y + 1), line, font=font, fill=(0, 0, 0, 255))
        draw.text((font_size // 2, y), line, font=font, fill=(255, 255, 255, 255))
        y += int(font_size * 1.3)
