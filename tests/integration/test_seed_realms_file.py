"""A broker starts with the seed's own realms.yml and gets an identity of its own."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.servers import BrokerServer, broker_settings, free_port
from tests.unit.realms.test_config import SEED_FILE


def _status(url: str) -> dict[str, object]:
    return httpx.get(f"{url}/api/federation/status", timeout=10).json()  # type: ignore[no-any-return]


def test_seed_file_starts_with_a_kept_random_id_and_a_live_callback(tmp_path: Path) -> None:
    # Without the callback line, the default is the broker's own base URL.
    (tmp_path / "realms.yml").write_text(SEED_FILE.replace("federation_callback_url:", "# was:"))
    port = free_port()
    settings = broker_settings(tmp_path, server={"host": "0.0.0.0", "port": port})
    first = BrokerServer(settings, port=port)
    first.start()
    try:
        status = _status(first.url)
        realms = httpx.get(f"{first.url}/api/realms/summary", timeout=10).json()["realms"]
    finally:
        first.stop()
    federation_id = status["federation_id"]
    assert isinstance(federation_id, str) and federation_id.startswith("rentahal-")
    assert federation_id != "rentahal-main"
    assert {r["name"] for r in realms} - {"$LEGACY"} == {"$CHAT", "$VISION", "$IMAGINE"}
    assert status["callback_url"] == f"http://127.0.0.1:{port}"

    # Same directory, same file: the id is kept, and the callback URL answers.
    again = BrokerServer(settings, port=port)
    again.start()
    try:
        status = _status(again.url)
        assert status["federation_id"] == federation_id
        assert httpx.get(str(status["callback_url"]), timeout=10).status_code == 200
    finally:
        again.stop()
