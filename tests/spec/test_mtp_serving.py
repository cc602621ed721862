"""MTP through the OpenAI server, with the tool and reasoning parsers and the thinking budget.

Under speculative decoding a step can emit several tokens, so a streamed delta may carry a
whole tool call or cross `</think>`, and the thinking budget must still cut the thought at
its token count. The test-only forced-output logits processor cannot run here (vLLM's V1
runner refuses custom logits processors with speculative decoding), so the outputs come from
the trained tiny checkpoint itself, prompted with its dialogues (a tool call, two calls, a
thought then an answer). Two servers, same flags, one with `--speculative-config`: every
response must be the same in both, streamed and not, and well-formed.
"""

from __future__ import annotations

import json

import pytest

from ds_plugin.testing import train_tiny
from ds_plugin.testing.server import CPU_DEFAULT_ARGS, ServerError, VllmServer

pytestmark = pytest.mark.engine

NAME = "tiny"
ARGS = [*CPU_DEFAULT_ARGS, "--served-model-name", NAME, "--enable-auto-tool-choice",
        "--tool-call-parser", "deepseekv3", "--reasoning-parser", "deepseek-v3"]
MTP = {"method": "mtp", "num_speculative_tokens": 3}
TOOLS = [{"type": "function", "function": {
    "name": n, "description": "d", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    for n in ("get_weather", "get_time")]
BUDGET = 8
THINK = "Why is the sky blue? Think first."


def _chat(text: str, **extra) -> dict:
    return {"model": NAME, "temperature": 0, "max_tokens": 96,
            "messages": [{"role": "user", "content": text}], **extra}


CASES = {
    "tool": _chat("What is the weather in Paris?", tools=TOOLS),
    "two_tools": _chat("Weather in Rome and the time in Oslo?", tools=TOOLS),
    "think": _chat(THINK, chat_template_kwargs={"thinking": True}),
    "budget_native": _chat(THINK, chat_template_kwargs={"thinking": True},
                           thinking_token_budget=BUDGET),
    "budget_sglang": _chat(THINK, chat_template_kwargs={"thinking": True},
                           custom_params={"thinking_budget": BUDGET}),
    "story": _chat("Tell me a story.", max_tokens=64, logprobs=True),
}


def _responses(server: VllmServer) -> dict:
    """Per case: the message non-streamed and streamed (deltas reassembled), and the most
    tokens one streamed delta carried."""
    out = {}
    for name, req in CASES.items():
        status, body = server.post("/v1/chat/completions", req)
        assert status == 200, (name, body)
        choice = body["choices"][0]
        msg = choice["message"]
        full = {"content": msg.get("content") or "", "reasoning": msg.get("reasoning") or "",
                "calls": [(c["function"]["name"], c["function"]["arguments"])
                          for c in msg.get("tool_calls") or []],
                "finish": choice["finish_reason"]}
        events = [e["choices"][0] for e in server.stream("/v1/chat/completions", req)
                  if e.get("choices")]
        calls: dict[int, dict] = {}
        for e in events:
            for tc in e["delta"].get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"ids": set(), "names": [], "args": ""})
                call["ids"] |= {tc["id"]} if tc.get("id") else set()
                fn = tc.get("function") or {}
                call["names"] += [fn["name"]] if fn.get("name") else []
                call["args"] += fn.get("arguments") or ""
        for call in calls.values():  # one id and one name per call, sent once
            assert len(call["ids"]) == 1 and len(call["names"]) == 1, (name, call)
        streamed = {"content": "".join(e["delta"].get("content") or "" for e in events),
                    "reasoning": "".join(e["delta"].get("reasoning") or "" for e in events),
                    "calls": [(calls[i]["names"][0], calls[i]["args"]) for i in sorted(calls)],
                    "finish": next(e["finish_reason"] for e in reversed(events)
                                   if e.get("finish_reason"))}
        per_delta = [len((e.get("logprobs") or {}).get("content") or []) for e in events]
        out[name] = {"full": full, "streamed": streamed, "max_per_delta": max(per_delta)}
    return out


@pytest.fixture(scope="module")
def responses(tmp_path_factory):
    ckpt = train_tiny.trained_checkpoint()
    logs = tmp_path_factory.mktemp("mtp-serving")
    got = {}
    for mode, extra in (("off", []), ("on", ["--speculative-config", json.dumps(MTP)])):
        with VllmServer(ckpt, args=[*ARGS, *extra], log_path=logs / f"{mode}.log") as srv:
            got[mode] = _responses(srv)
            got[mode + "_log"] = srv.log_text()
    return got


def test_mtp_ran_and_streamed_several_tokens_per_delta(responses):
    assert "ds_plugin: building DeepSeekMTP" in responses["on_log"]
    assert "DeepSeekMTP" not in responses["off_log"]
    assert responses["off"]["story"]["max_per_delta"] == 1
    assert responses["on"]["story"]["max_per_delta"] >= 2


@pytest.mark.parametrize("case", list(CASES))
def test_same_response_with_and_without_mtp(responses, case):
    off, on = responses["off"][case], responses["on"][case]
    assert on["full"] == off["full"]
    assert on["streamed"] == on["full"] and off["streamed"] == off["full"]


def test_tool_calls_well_formed_under_mtp(responses):
    one, two = responses["on"]["tool"]["full"], responses["on"]["two_tools"]["full"]
    assert one["finish"] == "tool_calls" and one["calls"], one
    assert two["finish"] == "tool_calls" and len(two["calls"]) == 2, two
    for name, args in one["calls"] + two["calls"]:
        assert name in ("get_weather", "get_time") and isinstance(json.loads(args), dict)


def test_thinking_budget_cuts_at_the_same_place_under_mtp(responses):
    on = responses["on"]
    thought = on["think"]["full"]["reasoning"]
    assert thought and on["think"]["full"]["content"]
    native, sglang = on["budget_native"]["full"], on["budget_sglang"]["full"]
    assert native == sglang
    assert native["reasoning"] and thought.startswith(native["reasoning"].rstrip())
    # Cut after exactly BUDGET thought tokens.
    tok = train_tiny.load_tokenizer()
    assert len(tok(native["reasoning"].strip(), add_special_tokens=False)["input_ids"]) \
        <= BUDGET < len(tok(thought, add_special_tokens=False)["input_ids"])


def test_logits_processors_with_mtp_refused_in_one_line_at_startup(tmp_path):
    log = tmp_path / "refused.log"
    args = [*ARGS, "--speculative-config", json.dumps(MTP),
            "--logits-processors", "ds_plugin.testing.forced_output:ForcedOutput"]
    with pytest.raises(ServerError):
        VllmServer(train_tiny.trained_checkpoint(), args=args, log_path=log).start()
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if "ds-plugin: --logits-processors" in ln
             and " ERROR " in ln]
    assert len(lines) == 1, text[-3000:]
    assert "--speculative-config" in lines[0] and "ForcedOutput" in lines[0]
    # Refused while the flags were checked: no engine process was started.
    assert "Initializing a V1 LLM engine" not in text
