"""The real vLLM OpenAI server, ds-plugin loaded, serving tiny DeepSeek checkpoints."""

from __future__ import annotations

import pytest

from tests.conftest import SERVED_NAME

pytestmark = pytest.mark.engine

CHAT = {"model": SERVED_NAME, "max_tokens": 12, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}
COMPLETION = {"model": SERVED_NAME, "max_tokens": 12, "temperature": 0,
              "prompt": "The capital of France is"}


def test_plugin_model_class_built_in_the_worker(server):
    # Logged by our class's __init__, which runs in the engine's worker process only if
    # vLLM resolved the architecture to it.
    from ds_plugin.model.deepseek_v3 import BUILD_LOG_LINE

    line = f"{BUILD_LOG_LINE} (ds_plugin.model.deepseek_v3.DeepseekV3ForCausalLM)"
    assert line in server.log_text()


def test_models_endpoint(server):
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + "/v1/models", timeout=30) as r:
        ids = [m["id"] for m in json.loads(r.read())["data"]]
    assert ids == [SERVED_NAME]


def test_chat_completion(server):
    status, body = server.post("/v1/chat/completions", CHAT)
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["prompt_tokens"] > 5


def test_chat_streaming_equals_non_streaming(server):
    _, full = server.post("/v1/chat/completions", CHAT)
    events = server.stream("/v1/chat/completions", CHAT)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == full["choices"][0]["message"]["content"]
    finals = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finals[-1] == full["choices"][0]["finish_reason"]


def test_completion_and_streaming(server):
    status, full = server.post("/v1/completions", COMPLETION)
    assert status == 200, full
    assert full["choices"][0]["text"]
    events = server.stream("/v1/completions", COMPLETION)
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == full["choices"][0]["text"]


def test_bad_request_is_400_and_server_keeps_serving(server):
    status, body = server.post("/v1/completions", {**COMPLETION, "max_tokens": -3})
    assert status == 400, body
    status, body = server.post("/v1/chat/completions", {**CHAT, "messages": "not a list"})
    assert status in (400, 422), body
    status, _ = server.post("/v1/completions", COMPLETION)
    assert status == 200


def test_fp8_checkpoint_serves(fp8_server):
    status, body = fp8_server.post("/v1/completions", COMPLETION)
    assert status == 200, body
    assert body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] > 0
