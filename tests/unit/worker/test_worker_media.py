"""Base64 decoding, image facts and audio sniffing of the worker."""

from __future__ import annotations

import base64
import io
import struct
import wave

import pytest
from PIL import Image

from rentahal.worker.errors import InputError
from rentahal.worker.media import (
    decode_base64,
    fix_wav_sizes,
    image_mime,
    inspect_image,
    load_images,
    require_audio,
    sniff_audio,
)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _red_and_blue(width: int = 640, height: int = 480) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (width * 3 // 4, 0, width, height))
    return image


def test_decode_base64_accepts_plain_and_data_uri() -> None:
    assert decode_base64(base64.b64encode(b"abc").decode()) == b"abc"
    assert decode_base64("data:image/png;base64," + base64.b64encode(b"xyz").decode()) == b"xyz"
    assert decode_base64("eHl6") == b"xyz"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "image is empty"),
        ("not base64 at all!", "not valid base64"),
        ("https://example.com/cat.png", "fetches no URLs"),
        ("data:image/png,rawtext", "not base64 encoded"),
    ],
)
def test_decode_base64_rejects_with_a_clear_message(value: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_base64(value)


def test_inspect_image_reports_size_mode_and_dominant_colours() -> None:
    facts = inspect_image(_png(_red_and_blue()))
    assert (facts.format, facts.width, facts.height, facts.mode) == ("PNG", 640, 480, "RGB")
    assert facts.colours[0] == ("#ff0000", 75.0)
    assert facts.colours[1] == ("#0000ff", 25.0)


def test_transparent_pixels_count_as_white() -> None:
    facts = inspect_image(_png(Image.new("RGBA", (32, 16), (0, 0, 0, 0))))
    assert facts.mode == "RGBA"
    assert facts.colours == (("#ffffff", 100.0),)


def test_three_colours_at_most_most_frequent_first() -> None:
    image = Image.new("RGB", (100, 100), (0, 128, 0))
    image.paste((255, 255, 0), (0, 0, 30, 100))
    image.paste((0, 0, 0), (30, 0, 50, 100))
    image.paste((255, 255, 255), (50, 0, 60, 100))
    facts = inspect_image(_png(image))
    assert [hex_ for hex_, _ in facts.colours] == ["#008000", "#ffff00", "#000000"]
    assert [share for _, share in facts.colours] == [40.0, 30.0, 20.0]


def test_garbage_is_not_an_image() -> None:
    with pytest.raises(InputError, match="not a decodable image"):
        inspect_image(b"GIF89a but not really")


async def test_load_images_names_the_bad_one() -> None:
    good = base64.b64encode(_png(_red_and_blue(8, 8))).decode()
    assert len(await load_images([good])) == 1
    with pytest.raises(InputError, match="image 2 is not a decodable image"):
        await load_images([good, base64.b64encode(b"hello").decode()])


def test_image_mime_by_magic_bytes() -> None:
    jpeg = io.BytesIO()
    _red_and_blue(8, 8).save(jpeg, format="JPEG")
    assert image_mime(jpeg.getvalue()) == "image/jpeg"
    assert image_mime(_png(_red_and_blue(8, 8))) == "image/png"


def _wav(frames: int = 800) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x01" * frames)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"OggS\x00\x02" + bytes(20), "OGG"),
        (b"\x1a\x45\xdf\xa3" + bytes(20), "WebM"),
        (b"ID3\x04\x00" + bytes(20), "MP3"),
        (b"\xff\xfb\x90\x64" + bytes(20), "MP3"),
        (b"fLaC" + bytes(20), "FLAC"),
    ],
)
def test_sniff_audio_recognises_containers(head: bytes, kind: str) -> None:
    assert sniff_audio(head) == kind


def test_sniff_audio_wav_and_non_audio() -> None:
    assert sniff_audio(_wav()) == "WAV"
    assert sniff_audio(b"RIFF\x00\x00\x00\x00WEBPVP8 ") is None
    assert sniff_audio(b"\xff\xff\xff\xff") is None
    assert sniff_audio(b"hello world") is None
    with pytest.raises(InputError, match="not audio"):
        require_audio(b"%PDF-1.7")
    with pytest.raises(InputError, match="empty"):
        require_audio(b"")


def test_fix_wav_sizes_repairs_streamed_headers() -> None:
    data = bytearray(_wav(100))
    struct.pack_into("<I", data, 4, 0x7FFFF024)
    struct.pack_into("<I", data, 40, 0x7FFFF000)
    fixed = fix_wav_sizes(bytes(data))
    with wave.open(io.BytesIO(fixed)) as reader:
        assert reader.getnframes() == 100
    assert fix_wav_sizes(b"not a wav") == b"not a wav"
