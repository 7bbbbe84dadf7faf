"""[Claude] and [HuggingFace] API keys in config.ini give working workers, as in the original."""

from __future__ import annotations

from tests.fakes import FakeServer, claude, huggingface
from tests.support.client import WSClient


async def test_claude_and_huggingface_from_config(broker_factory) -> None:
    claude_api = FakeServer(claude.create_app).start()
    hf_api = FakeServer(huggingface.create_app).start()
    try:
        server = broker_factory(
            claude={
                "api_key": "sk-test",
                "endpoint": f"{claude_api.address}/v1/messages",
                "model_name": "claude-test-model",
            },
            huggingface={"api_key": "hf-test", "default_models": "gpt2"},
        )
        # point the configured Hugging Face worker at the fake API
        state = server.registry.get("huggingface")
        assert state is not None
        state.worker.address = hf_api.address
        client = await WSClient.connect(server.ws_url)
        seq = await client.connect_sequence()
        workers = next(m for m in seq if m["type"] == "worker_update")["workers"]
        assert {w["name"]: w["api_key"] for w in workers} == {"claude": "***", "huggingface": "***"}
        reply = await client.query("hello", model_type="claude")
        assert reply["type"] == "query_result", reply
        assert reply["result"] == "claude-test-model read text"
        assert claude_api.state.last.headers["x-api-key"] == "sk-test"
        reply = await client.query("once upon", model_type="huggingface")
        assert reply["type"] == "query_result", reply
        assert hf_api.state.last.path.endswith("/models/gpt2")
        rows = server.call(server.storage.recent_queries(client.guid))
        assert {r["worker"] for r in rows} == {"claude", "huggingface"}
        # the keys stay in the config: nothing was written to ai_workers
        assert server.call(server.storage.list_workers()) == []
        await client.close()
    finally:
        claude_api.stop()
        hf_api.stop()
