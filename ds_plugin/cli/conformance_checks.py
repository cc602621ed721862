"""The protocol checks of `ds-plugin conformance`: tool calls, reasoning, thinking budget,
streaming == non-streaming. Each returns a Result with what it measured.

Requests are greedy (temperature 0) so streamed and non-streamed answers can be compared.
`Ctx.force` is TEST ONLY: on ds-plugin's test server (whose test-only logits processor
reads `vllm_xargs.force_ids`) it makes a tiny random model emit a chosen DeepSeek output,
so these checks can be exercised deterministically. Real servers are never sent it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ds_plugin.cli.http import Client

__all__ = ["Ctx", "Result", "PROTOCOL_CHECKS", "message_of", "stream_message"]

# The request shape of the seed's tool-call example (SGLang's DeepSeek docs use the same tool).
QUERY_WEATHER = {"type": "function", "function": {
    "name": "query_weather", "description": "Get the weather of a city; the user must name it.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "the city, e.g. Beijing"}},
        "required": ["city"]}}}
OPENAI_SRC = "OpenAI chat completions API (tool_calls, finish_reason)"
BUDGET = 8

# DeepSeek's raw output markup, for the test-only forced outputs.
EOS = "<｜end▁of▁sentence｜>"
_CALLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
_CALL = ("<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>")


def _forced_call(fmt: str, name: str, args: str) -> str:
    b, e, sep = _CALL
    body = (f"{b}function{sep}{name}\n```json\n{args}\n```{e}" if fmt == "v3"
            else f"{b}{name}{sep}{args}{e}")
    return _CALLS[0] + body + _CALLS[1]


@dataclass
class Result:
    name: str
    kind: str  # protocol / quality / speed
    status: str  # PASS / FAIL / SKIP
    measured: str
    threshold: str
    source: str


@dataclass
class Ctx:
    client: Client
    model: str
    family: str  # v3 / r1 / v31
    max_tokens: int = 1024
    force: str | None = None  # TEST ONLY: tool-call markup format ("v3"/"v31") to force

    def body(self, messages, forced: str | None = None, **extra) -> dict[str, Any]:
        req = {"model": self.model, "messages": messages, "temperature": 0,
               "max_tokens": self.max_tokens, **extra}
        if self.force and forced is not None:
            req["vllm_xargs"] = {**req.get("vllm_xargs", {}), "force_ids": self._ids(forced + EOS)}
        return req

    def _ids(self, text: str) -> list[int]:
        status, body = self.client.post("/tokenize", {"model": self.model, "prompt": text,
                                                      "add_special_tokens": False})
        if status != 200:
            raise RuntimeError(f"/tokenize failed ({status}): {body}")
        return body["tokens"]

    def thinking(self, on: bool) -> dict[str, Any]:
        # V3.1 switches thinking per request; R1's template always thinks (harmless extra).
        return {"chat_template_kwargs": {"thinking": on}}


def message_of(resp: dict) -> tuple[dict, str]:
    choice = resp["choices"][0]
    msg = choice["message"]
    return {"content": msg.get("content") or "",
            "reasoning": msg.get("reasoning") or msg.get("reasoning_content") or "",
            "calls": [(c["function"]["name"], c["function"]["arguments"])
                      for c in msg.get("tool_calls") or []]}, choice.get("finish_reason")


def stream_message(events: list[dict]) -> tuple[dict, str | None, list[str]]:
    """Reassembled streamed message, last finish_reason, and protocol problems seen."""
    content, reasoning, finish, problems = "", "", None, []
    calls: dict[int, dict] = {}
    for e in events:
        for c in e.get("choices") or []:
            d = c.get("delta") or {}
            content += d.get("content") or ""
            reasoning += d.get("reasoning") or d.get("reasoning_content") or ""
            for tc in d.get("tool_calls") or []:
                call = calls.setdefault(tc.get("index", 0), {"ids": set(), "names": [], "args": ""})
                if tc.get("id"):
                    call["ids"].add(tc["id"])
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["names"].append(fn["name"])
                call["args"] += fn.get("arguments") or ""
            finish = c.get("finish_reason") or finish
    for i, call in sorted(calls.items()):
        if len(call["ids"]) != 1 or len(call["names"]) != 1:
            problems.append(f"call {i}: {len(call['ids'])} ids, {len(call['names'])} names "
                            "(expected one each)")
    msg = {"content": content, "reasoning": reasoning,
           "calls": [(c["names"][0] if c["names"] else "", c["args"])
                     for _, c in sorted(calls.items())]}
    return msg, finish, problems


def _calls(calls: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name}({args})" for name, args in calls) or "no call"


def _weather(ctx: Ctx) -> tuple[dict, dict]:
    fmt = ctx.force or "v3"
    req = ctx.body([{"role": "user", "content": "What is the weather like in Paris today?"}],
                   forced=_forced_call(fmt, "query_weather", '{"city": "Paris"}'),
                   tools=[QUERY_WEATHER])
    return req, ctx.client.post("/v1/chat/completions", req)


def check_models(ctx: Ctx) -> Result:
    status, text = ctx.client.get("/v1/models")
    ids = [m.get("id") for m in json.loads(text).get("data", [])] if status == 200 else []
    ok = ctx.model in ids
    return Result("models", "protocol", "PASS" if ok else "FAIL",
                  f"HTTP {status}: {', '.join(map(str, ids)) or 'none'}", f"lists {ctx.model}",
                  "OpenAI /v1/models")


def check_tool_call(ctx: Ctx) -> Result:
    _, (status, resp) = _weather(ctx)
    if status != 200:
        return Result("tool_call", "protocol", "FAIL", f"HTTP {status}: {str(resp)[:120]}",
                      "HTTP 200", OPENAI_SRC)
    msg, finish = message_of(resp)
    args = None
    if msg["calls"]:
        try:
            args = json.loads(msg["calls"][0][1])
        except ValueError:
            pass
    ok = (finish == "tool_calls" and bool(msg["calls"]) and msg["calls"][0][0] == "query_weather"
          and isinstance(args, dict) and "city" in args)
    return Result("tool_call", "protocol", "PASS" if ok else "FAIL",
                  f"{finish}; {_calls(msg['calls'])}",
                  "tool_calls; query_weather(JSON with city)",
                  OPENAI_SRC)


def check_tool_call_stream(ctx: Ctx) -> Result:
    req, (status, resp) = _weather(ctx)
    if status != 200:
        return Result("tool_call_stream", "protocol", "SKIP", f"non-streaming HTTP {status}",
                      "", OPENAI_SRC)
    full, _ = message_of(resp)
    streamed, finish, problems = stream_message(ctx.client.stream("/v1/chat/completions",
                                                                  req).events)
    ok = not problems and finish == "tool_calls" and streamed["calls"] == full["calls"] \
        and bool(full["calls"])
    return Result("tool_call_stream", "protocol", "PASS" if ok else "FAIL",
                  f"{finish}; {_calls(streamed['calls'])}"
                  + (f"; {'; '.join(problems)}" if problems else ""),
                  "== non-streamed calls; tool_calls",
                  OPENAI_SRC)


def check_reasoning_split(ctx: Ctx) -> Result:
    name = "reasoning_split"
    src = "DeepSeek-R1 output format (<think>...</think>), vLLM/SGLang reasoning parsers"
    if ctx.family == "v3":
        return Result(name, "protocol", "SKIP", "family v3 (no thinking)", "", src)
    req = ctx.body([{"role": "user", "content": "What is 7 times 8? Answer briefly."}],
                   forced="<think>7 times 8 is 56.</think>56.", **ctx.thinking(True))
    status, resp = ctx.client.post("/v1/chat/completions", req)
    if status != 200:
        return Result(name, "protocol", "FAIL", f"HTTP {status}", "HTTP 200", src)
    msg, _ = message_of(resp)
    leaked = any(t in msg["content"] for t in ("<think>", "</think>"))
    ok = bool(msg["reasoning"].strip()) and not leaked
    return Result(name, "protocol", "PASS" if ok else "FAIL",
                  f"reasoning {len(msg['reasoning'])} chars, content {msg['content'][:60]!r}",
                  "thought in reasoning only", src)


def check_v31_thinking_toggle(ctx: Ctx) -> Result:
    name, src = "v31_thinking_toggle", "DeepSeek-V3.1 chat template (chat_template_kwargs.thinking)"
    if ctx.family != "v31":
        return Result(name, "protocol", "SKIP", f"family {ctx.family} has no thinking switch",
                      "", src)
    msgs = [{"role": "user", "content": "Name a prime number."}]
    on = ctx.client.post("/v1/chat/completions",
                         ctx.body(msgs, forced="<think>2 is prime.</think>2", **ctx.thinking(True)))
    off = ctx.client.post("/v1/chat/completions", ctx.body(msgs, forced="2", **ctx.thinking(False)))
    if on[0] != 200 or off[0] != 200:
        return Result(name, "protocol", "FAIL", f"HTTP {on[0]} / {off[0]}", "HTTP 200", src)
    m_on, m_off = message_of(on[1])[0], message_of(off[1])[0]
    ok = bool(m_on["reasoning"].strip()) and not m_off["reasoning"] and bool(m_off["content"])
    return Result(name, "protocol", "PASS" if ok else "FAIL",
                  f"on: reasoning {len(m_on['reasoning'])} chars; off: reasoning "
                  f"{len(m_off['reasoning'])} chars, content {len(m_off['content'])} chars",
                  "on: reasoning; off: none", src)


def _count(ctx: Ctx, text: str) -> int | None:
    status, body = ctx.client.post("/tokenize", {"model": ctx.model, "prompt": text,
                                                 "add_special_tokens": False})
    return len(body["tokens"]) if status == 200 else None


def check_thinking_budget(ctx: Ctx) -> Result:
    name = "thinking_budget"
    src = "vLLM thinking_token_budget; SGLang custom_params.thinking_budget"
    if ctx.family == "v3":
        return Result(name, "protocol", "SKIP", "family v3 (no thinking)", "", src)
    thought = " ".join(f"step{i}" for i in range(4 * BUDGET))
    msgs = [{"role": "user", "content": "Think step by step: what is 17 times 23?"}]
    forced = f"<think>{thought}</think>391."
    shapes = {"unbudgeted": {}, "thinking_token_budget": {"thinking_token_budget": BUDGET},
              "custom_params": {"custom_params": {"thinking_budget": BUDGET}}}
    got = {}
    for label, extra in shapes.items():
        status, resp = ctx.client.post("/v1/chat/completions",
                                       ctx.body(msgs, forced=forced, **ctx.thinking(True), **extra))
        if status != 200:
            return Result(name, "protocol", "FAIL", f"{label}: HTTP {status}: {str(resp)[:100]}",
                          "HTTP 200", src)
        got[label] = message_of(resp)[0]["reasoning"]
    counts = {k: _count(ctx, v) for k, v in got.items()}
    if counts["unbudgeted"] is not None and counts["unbudgeted"] <= BUDGET:
        return Result(name, "protocol", "SKIP", f"unbudgeted thought is only "
                      f"{counts['unbudgeted']} tokens", f"> {BUDGET}", src)
    same = got["thinking_token_budget"] == got["custom_params"]
    within = all(counts[k] is None or counts[k] <= BUDGET + 1
                 for k in ("thinking_token_budget", "custom_params"))
    shorter = len(got["custom_params"]) < len(got["unbudgeted"])
    ok = same and within and shorter
    return Result(name, "protocol", "PASS" if ok else "FAIL",
                  "reasoning tokens: " + ", ".join(f"{k} {'?' if v is None else v}"
                                                   for k, v in counts.items())
                  + f"; the two budgeted shapes {'equal' if same else 'differ'}",
                  f"both <= {BUDGET}+1 tokens, equal", src)


def check_stream_equals_nonstream(ctx: Ctx) -> Result:
    name, src = "stream_equals_nonstream", "greedy decoding is deterministic (OpenAI stream=true)"
    req = ctx.body([{"role": "user", "content": "Write one sentence about the sea."}],
                   max_tokens=min(64, ctx.max_tokens))
    status, resp = ctx.client.post("/v1/chat/completions", req)
    if status != 200:
        return Result(name, "protocol", "FAIL", f"HTTP {status}", "HTTP 200", src)
    full, finish = message_of(resp)
    streamed, s_finish, problems = stream_message(ctx.client.stream("/v1/chat/completions",
                                                                    req).events)
    ok = full == streamed and finish == s_finish and not problems
    return Result(name, "protocol", "PASS" if ok else "FAIL",
                  f"{len(full['content'])} chars, finish {finish}/{s_finish}"
                  + ("" if full == streamed else f"; differ: {full} vs {streamed}"),
                  "identical", src)


PROTOCOL_CHECKS = (check_models, check_tool_call, check_tool_call_stream, check_reasoning_split,
                   check_v31_thinking_toggle, check_thinking_budget, check_stream_equals_nonstream)
