"""A1111 WebUI backend: the original txt2img payload, overrides, the image answer."""

from __future__ import annotations

import pytest
from tests.fakes import PNG_B64, FakeServer

from rentahal.backends import HttpClient
from rentahal.backends.a1111 import DEFAULT_TXT2IMG, A1111Backend
from rentahal.errors import ConfigError
from rentahal.models import AIWorker, Query


def _worker(fake: FakeServer, **fields: object) -> AIWorker:
    return AIWorker(name="sd-1", address=fake.address, type="imagine", **fields)  # type: ignore[arg-type]


IMAGINE = Query(prompt="a lighthouse at dusk", query_type="imagine")


async def test_sends_the_original_payload(fake_a1111: FakeServer, client: HttpClient) -> None:
    reply = await A1111Backend().run(client, _worker(fake_a1111), IMAGINE, 5)

    assert (reply.result, reply.result_type) == (PNG_B64, "image")
    sent = fake_a1111.state.last
    assert (sent.method, sent.path) == ("POST", "/sdapi/v1/txt2img")
    assert sent.json == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "steps": 50,
        "sampler_name": "Euler a",
        "cfg_scale": 7,
        "width": 512,
        "height": 512,
        "seed": -1,
    }


async def test_a1111_is_the_inferred_protocol_of_imagine_workers(fake_a1111: FakeServer) -> None:
    assert _worker(fake_a1111).protocol == "a1111"


async def test_strips_a_data_uri_prefix(fake_a1111: FakeServer, client: HttpClient) -> None:
    fake_a1111.state.options["data_uri"] = True

    reply = await A1111Backend().run(client, _worker(fake_a1111), IMAGINE, 5)

    assert reply.result == PNG_B64


async def test_options_and_worker_options_override(
    fake_a1111: FakeServer, client: HttpClient
) -> None:
    backend = A1111Backend(
        options={"steps": 20, "sampler_name": "DPM++ 2M"},
        worker_options={"sd-1": {"width": 768, "height": 768, "steps": 30}},
    )

    await backend.run(client, _worker(fake_a1111), IMAGINE, 5)
    await backend.run(client, AIWorker(name="sd-2", address=fake_a1111.address), IMAGINE, 5)

    first, second = (r.json for r in fake_a1111.state.requests)
    assert (first["steps"], first["sampler_name"], first["width"], first["height"]) == (
        30,
        "DPM++ 2M",
        768,
        768,
    )
    assert (second["steps"], second["width"]) == (20, 512)
    assert first["prompt"] == second["prompt"] == IMAGINE.prompt


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="stpes"):
        A1111Backend(options={"stpes": 20})
    with pytest.raises(ConfigError, match="sd-9"):
        A1111Backend(worker_options={"sd-9": {"prompt": "always this"}})


def test_defaults_are_not_shared_mutable_state() -> None:
    backend = A1111Backend(options={"steps": 10})
    worker = AIWorker(name="x", address="h:1", type="imagine")
    backend.payload(worker, IMAGINE)["steps"] = 99
    assert DEFAULT_TXT2IMG["steps"] == 50
    assert backend.payload(worker, IMAGINE)["steps"] == 10


async def test_listed_model_selects_the_checkpoint(
    fake_a1111: FakeServer, client: HttpClient
) -> None:
    worker = _worker(fake_a1111, models=["v1-5-pruned-emaonly", "sdxl_base"])
    backend = A1111Backend()

    await backend.run(client, worker, IMAGINE.model_copy(update={"model_name": "sdxl_base"}), 5)
    await backend.run(client, worker, IMAGINE.model_copy(update={"model_name": "unknown"}), 5)
    await backend.run(client, worker, IMAGINE, 5)

    bodies = [r.json for r in fake_a1111.state.requests]
    assert bodies[0]["override_settings"] == {"sd_model_checkpoint": "sdxl_base"}
    assert "override_settings" not in bodies[1]
    assert "override_settings" not in bodies[2]


async def test_probe_uses_options_endpoint(fake_a1111: FakeServer, client: HttpClient) -> None:
    assert await A1111Backend().probe(client, _worker(fake_a1111), 5) == 200
    assert fake_a1111.state.last.path == "/sdapi/v1/options"
