"""The real vLLM OpenAI server, ds-plugin loaded, serving tiny DeepSeek checkpoints."""

from __future__ import annotations

import math

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


FP8_PROMPTS = ["The capital of France is", "1 2 3 4 5 6 7", "def fibonacci(n):"]
IDENTICAL = 10
# Greedy tokens are compared up to the twin's first step whose two best log-probs lie
# closer than this (nats): the two servers run different kernels on the same weights,
# so a near-tie may go either way; past it the continuations legitimately differ.
NEAR_TIE = 0.05


def _greedy(prompt: str) -> dict:
    return {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0,
            "logprobs": 2, "return_token_ids": True}


def _decided_steps(choice: dict) -> int:
    for step, top in enumerate(choice["logprobs"]["top_logprobs"]):
        best = sorted(top.values(), reverse=True)
        if len(best) > 1 and best[0] - best[1] < NEAR_TIE:
            return step
    return len(choice["token_ids"])


def test_fp8_compiled_serving_equals_its_dequantized_twin(server, fp8_server):
    # Both servers run vLLM's default compiled mode; `server` holds the bf16 twin (exactly
    # the dequantized weights), so the FP8 checkpoint must give its greedy tokens.
    from concurrent.futures import ThreadPoolExecutor

    decided = 0
    for prompt in FP8_PROMPTS:
        with ThreadPoolExecutor(IDENTICAL) as pool:
            replies = list(pool.map(lambda _: fp8_server.post("/v1/completions", _greedy(prompt)),
                                    range(IDENTICAL)))
        # A NaN log-prob cannot be serialised: vLLM answers "Out of range float values are
        # not JSON compliant" instead of 200.
        assert all(status == 200 for status, _ in replies), replies
        choices = [body["choices"][0] for _, body in replies]
        assert all(c["token_ids"] == choices[0]["token_ids"] for c in choices), \
            [c["token_ids"] for c in choices]
        lps = [lp for c in choices for lp in c["logprobs"]["token_logprobs"]]
        assert all(math.isfinite(lp) for lp in lps), lps
        status, body = server.post("/v1/completions", _greedy(prompt))
        assert status == 200, body
        twin = body["choices"][0]
        n = _decided_steps(twin)
        decided += n
        assert choices[0]["token_ids"][:n] == twin["token_ids"][:n], (prompt, n)
    assert decided >= 8 * len(FP8_PROMPTS), f"only {decided} decided steps: too flat to judge"
