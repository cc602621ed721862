"""Tool-call and reasoning parsers through the real vLLM OpenAI server (session server).

The tiny random model is made to emit a chosen raw output with the test-only logits
processor ds_plugin/testing/forced_output.py (`vllm_xargs.force_ids`); the ids come
from the real V3 tokenizer the server uses. Each case is asserted on the OpenAI
response, non-streaming and streaming (deltas reassembled).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.parser_corpus import B, E, load_tokenizer, v3_call
from tests.conftest import SERVED_NAME

pytestmark = pytest.mark.engine

EOS = 1  # <｜end▁of▁sentence｜>
W = '{"city": "Paris", "days": [1, 2]}'
TOOLS = [{"type": "function", "function": {
    "name": n, "description": "d", "parameters": {"type": "object", "properties": {}}}}
    for n in ("get_weather", "get_time")]


def forced(text: str, eos: bool = True) -> list[int]:
    ids = load_tokenizer("deepseek-v3")(text, add_special_tokens=False)["input_ids"]
    return ids + [EOS] if eos else ids


def body(text: str, *, tools=True, thinking=None, max_tokens=256, eos=True, **extra):
    req = {"model": SERVED_NAME, "temperature": 0, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "Weather in Paris?"}],
           "vllm_xargs": {"force_ids": forced(text, eos)}, **extra}
    if tools:
        req["tools"] = TOOLS
    if thinking is not None:
        req["chat_template_kwargs"] = {"thinking": thinking}
    return req


def both(server, req):
    """(non-streaming message + finish, streamed message + finish), same shape."""
    status, full = server.post("/v1/chat/completions", req)
    assert status == 200, full
    choice = full["choices"][0]
    msg = choice["message"]
    plain = {"content": msg.get("content") or "", "reasoning": msg.get("reasoning") or "",
             "calls": [(c["function"]["name"], c["function"]["arguments"])
                       for c in msg.get("tool_calls") or []]}
    events = [e["choices"][0] for e in server.stream("/v1/chat/completions", req)
              if e.get("choices")]
    content = "".join(e["delta"].get("content") or "" for e in events)
    reasoning = "".join(e["delta"].get("reasoning") or "" for e in events)
    calls: dict[int, dict] = {}
    for e in events:
        for tc in e["delta"].get("tool_calls") or []:
            call = calls.setdefault(tc["index"], {"ids": set(), "names": [], "args": ""})
            if tc.get("id"):
                call["ids"].add(tc["id"])
            fn = tc.get("function") or {}
            if fn.get("name"):
                call["names"].append(fn["name"])
            call["args"] += fn.get("arguments") or ""
    for call in calls.values():  # one id, one name per call, sent once
        assert len(call["ids"]) == 1 and len(call["names"]) == 1, call
    streamed = {"content": content if content.strip() else "", "reasoning": reasoning,
                "calls": [(calls[i]["names"][0], calls[i]["args"]) for i in sorted(calls)]}
    plain["content"] = plain["content"] if plain["content"].strip() else ""
    return (plain, choice["finish_reason"]), (streamed, events[-1]["finish_reason"])


def test_tool_calls(server):
    text = "Let me check." + B + v3_call("get_weather", W) + "\n" + v3_call("get_time", "{}") + E
    (full, fin), (streamed, sfin) = both(server, body(text))
    assert full == streamed == {"content": "Let me check.", "reasoning": "",
                                "calls": [("get_weather", W), ("get_time", "{}")]}
    assert fin == sfin == "tool_calls"
    assert json.loads(full["calls"][0][1]) == {"city": "Paris", "days": [1, 2]}


def test_plain_answer_with_tools_offered_is_not_a_tool_call(server):
    (full, fin), (streamed, sfin) = both(server, body("It is sunny in Paris."))
    assert full == streamed == {"content": "It is sunny in Paris.", "reasoning": "",
                                "calls": []}
    assert fin == sfin == "stop"


def test_reasoning(server):
    text = "<think>\nThe user asks about weather.\n</think>\n\nSunny."
    (full, fin), (streamed, sfin) = both(server, body(text, tools=False, thinking=True))
    assert full == streamed == {"content": "\n\nSunny.",
                                "reasoning": "\nThe user asks about weather.\n", "calls": []}
    assert fin == sfin == "stop"


def test_reasoning_then_tool_call(server):
    text = "<think>Need the tool.</think>" + B + v3_call("get_weather", W) + E
    (full, fin), (streamed, sfin) = both(server, body(text, thinking=True))
    assert full == streamed == {"content": "", "reasoning": "Need the tool.",
                                "calls": [("get_weather", W)]}
    assert fin == sfin == "tool_calls"


def test_call_opened_inside_thoughts_is_still_a_call(server):
    text = "<think>Need the tool." + B + v3_call("get_weather", W) + E
    (full, _), (streamed, _) = both(server, body(text, thinking=True))
    assert full == streamed == {"content": "", "reasoning": "Need the tool.",
                                "calls": [("get_weather", W)]}


def test_thinking_off_leaves_think_text_in_content(server):
    (full, _), (streamed, _) = both(server, body("Plain <think>x</think> answer.",
                                                 tools=False, thinking=False))
    assert full == streamed == {"content": "Plain <think>x</think> answer.", "reasoning": "",
                                "calls": []}


def test_cut_off_inside_a_call(server):
    text = "Sure." + B + v3_call("get_weather", W) + E
    n = len(forced(text, eos=False)) - 8  # stop inside the arguments
    (full, _), (streamed, sfin) = both(server, body(text, max_tokens=n))
    assert full == streamed
    assert full["content"] == "Sure." and full["calls"][0][0] == "get_weather"
    assert W.startswith(full["calls"][0][1]) and full["calls"][0][1] != W
    assert sfin == "length"


THOUGHTS = " ".join(f"step{i}" for i in range(16))


def thoughts_reply(server, xargs=None, **budget):
    req = body(f"<think>{THOUGHTS}</think>Answer.", tools=False, thinking=True, **budget)
    req["vllm_xargs"].update(xargs or {})
    (full, _), (streamed, _) = both(server, req)
    assert full == streamed
    return full


def test_thinking_budget_same_for_every_request_shape(server):
    assert thoughts_reply(server)["reasoning"] == THOUGHTS  # no budget: all thoughts
    native = thoughts_reply(server, thinking_token_budget=5)
    sglang = thoughts_reply(server, custom_params={"thinking_budget": 5})
    xargs = thoughts_reply(server, xargs={"thinking_budget": 5})
    assert native == sglang == xargs
    capped = native["reasoning"]
    assert capped and len(capped) < len(THOUGHTS) and THOUGHTS.startswith(capped)


@pytest.mark.parametrize("bad", [
    {"custom_params": {"thinking_budget": -1}}, {"custom_params": {"thinking_budget": 2.5}},
    {"custom_params": {"thinking_budget": "10"}}, {"vllm_xargs": {"thinking_budget": -4}},
    {"thinking_token_budget": -5}, {"thinking_token_budget": 1.5},
    {"thinking_token_budget": 5, "custom_params": {"thinking_budget": 6}},
])
def test_bad_thinking_budget_is_400(server, bad):
    req = {"model": SERVED_NAME, "max_tokens": 4, "chat_template_kwargs": {"thinking": True},
           "messages": [{"role": "user", "content": "hi"}], **bad}
    status, resp = server.post("/v1/chat/completions", req)
    assert status == 400, resp
    status, _ = server.post("/v1/chat/completions", body("ok", tools=False))
    assert status == 200  # and the server keeps serving


def test_tool_choice_required_under_vllm_grammar(server):
    # "required" makes vLLM constrain decoding with xgrammar's DeepSeek structural tag;
    # the forced output follows that grammar, and our parser must read what it allows.
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "d",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    args = '{"city": "Paris"}'
    req = body(B + v3_call("get_weather", args) + E, tool_choice="required")
    req["tools"] = tools
    (full, fin), (streamed, sfin) = both(server, req)
    assert full == streamed == {"content": "", "reasoning": "", "calls": [("get_weather", args)]}
    assert fin == sfin == "tool_calls"
