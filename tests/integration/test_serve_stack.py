"""``rentahal serve``: the event loop and HTTP parser it runs on, and its access log setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest

from rentahal.cli import server_stack
from tests.support.broker_process import BrokerProcess
from tests.support.client import WSClient


def test_server_stack_prefers_uvloop_and_httptools() -> None:
    # Both come with uvicorn[standard], a dependency: a node serves on them.
    assert server_stack() == ("uvloop", "httptools")


def test_server_stack_falls_back_where_they_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without(name: str, *args: Any) -> Any:
        return None if name in ("uvloop", "httptools") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    assert server_stack() == ("asyncio", "h11")


@pytest.mark.parametrize("access_log", [False, True])
def test_access_log_only_when_asked(tmp_path: Path, access_log: bool) -> None:
    env = {"SERVER__ACCESS_LOG": str(access_log).lower()}
    with BrokerProcess(tmp_path, env=env) as broker:
        for _ in range(3):
            assert httpx.get(f"{broker.url}/debug/system_status", timeout=10).status_code == 200
        broker.stop()
        log = broker.log.read_text(errors="replace")
    assert ("GET /debug/system_status" in log) is access_log


@pytest.mark.parametrize("access_log", [False, True])
async def test_websocket_lines_only_with_the_access_log(tmp_path: Path, access_log: bool) -> None:
    env = {"SERVER__ACCESS_LOG": str(access_log).lower()}
    with BrokerProcess(tmp_path, env=env) as broker:
        for _ in range(3):
            client = await WSClient.connect(broker.ws_url)
            sequence = await client.connect_sequence()
            await client.close()
            assert sequence[-1]["type"] == "huggingface_update"
        broker.stop()
        log = broker.log.read_text(errors="replace")
    assert log.count('"WebSocket /ws" [accepted]') == (3 if access_log else 0)
    assert ("connection open" in log) is access_log
    assert "Application startup complete" in log  # other uvicorn lines stay
