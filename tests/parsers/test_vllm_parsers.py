"""ds_plugin/parsers/vllm_*_parser.py through vLLM's own serving parser (DelegatingParser).

Every corpus case, every chunking (one character, one real token, random, whole): the
streamed deltas reassembled equal the non-streaming response, which equals the
hand-written expectation; ids and names are sent once per call; finish_reason would be
"tool_calls" exactly when there are calls.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ds_plugin
from ds_plugin.parsers.scan import TOOL_MARKERS
from tests.helpers.parser_corpus import (B, E, Case, cases, chunkings, load_tokenizer,
                                             v3_call, v31_call)
from tests.helpers.parser_replay import (TOOL_NAMES, compose, expected,
                                             run_non_streaming, run_streaming, tokenizer_for)

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def managers():
    ds_plugin.register()
    from tests.helpers.vllm_api import ReasoningParserManager, ToolParserManager

    return ToolParserManager, ReasoningParserManager


def parser_for(case, managers):
    tools, reasoning = managers
    tool = tools.get_tool_parser("deepseekv3" if case.fmt == "v3" else "deepseekv31")
    if case.reasoning is None:
        return compose(tool, None)
    name = "deepseek-r1" if case.fmt == "v3" else "deepseek-v3"
    return compose(tool, reasoning.get_reasoning_parser(name))


@pytest.mark.parametrize("case", cases(), ids=lambda c: f"{c.fmt}-{c.name}")
def test_stream_equals_non_stream_equals_expected(case, managers):
    parser_cls = parser_for(case, managers)
    want = expected(case)
    assert run_non_streaming(parser_cls, case).key() == want.key()
    tok = load_tokenizer(tokenizer_for(case))
    for label, chunks in chunkings(case.text, tok).items():
        got = run_streaming(parser_cls, case, chunks)
        assert got.problems == [], label
        assert got.key() == want.key(), label


@pytest.mark.parametrize("tool,reasoning", [
    ("deepseekv3", "deepseek-r1"), ("deepseek_v3", "deepseek_r1"),
    ("deepseekv31", "deepseek-v3"), ("deepseek_v31", "deepseek_v3")])
def test_both_spellings_resolve_to_ours(tool, reasoning, managers):
    tools, reasonings = managers
    assert tools.get_tool_parser(tool).__module__ == "ds_plugin.parsers.vllm_tool_parser"
    assert reasonings.get_reasoning_parser(reasoning).__module__ == \
        "ds_plugin.parsers.vllm_reasoning_parser"


def test_v3_reasoning_parser_names_think_tags_without_request_kwargs(managers):
    # vLLM's ReasoningConfig builds the parser with the tokenizer only; the thinking
    # budget needs the start/end strings from it (vLLM's own deepseek_v3 gives None).
    _, reasonings = managers
    parser = reasonings.get_reasoning_parser("deepseek_v3")(load_tokenizer("deepseek-v3.1"))
    assert (parser.reasoning_start_str, parser.reasoning_end_str) == ("<think>", "</think>")
    v3 = reasonings.get_reasoning_parser("deepseek_v3")(load_tokenizer("deepseek-v3"))
    assert v3.reasoning_end_str == "</think>"  # V3 tokenizer: no think token, no crash


def test_prompt_that_closed_thinking_makes_output_content(managers):
    # V3.1 after a tool result: the template leaves "</think>" as the last think tag.
    _, reasonings = managers
    tok = load_tokenizer("deepseek-v3.1")
    parser = reasonings.get_reasoning_parser("deepseek-v3")(
        tok, chat_template_kwargs={"thinking": True})
    prompt = tok("<｜User｜>q<｜Assistant｜></think>ok<｜end▁of▁sentence｜><｜User｜>x"
                 "<｜Assistant｜></think>", add_special_tokens=False)["input_ids"]
    assert parser.is_reasoning_end(prompt)
    assert parser.extract_reasoning("The answer.", None) == (None, "The answer.")
    answer = tok("The answer.", add_special_tokens=False)["input_ids"]
    assert parser.count_reasoning_tokens(answer) == 0
    assert parser.extract_content_ids(answer) == answer
    thinking = reasonings.get_reasoning_parser("deepseek-v3")(
        tok, chat_template_kwargs={"thinking": True})
    assert not thinking.is_reasoning_end(tok("<｜Assistant｜><think>", add_special_tokens=False)
                                         ["input_ids"])
    assert thinking.extract_reasoning("Hmm.</think>A.", None) == ("Hmm.", "A.")


def test_reasoning_token_count_and_content_ids(managers):
    _, reasonings = managers
    tok = load_tokenizer("deepseek-r1")
    parser = reasonings.get_reasoning_parser("deepseek-r1")(tok)
    ids = tok("<think>a b c</think>done", add_special_tokens=False)["input_ids"]
    end = ids.index(tok.convert_tokens_to_ids("</think>"))
    assert parser.count_reasoning_tokens(ids) == end - 1
    assert parser.extract_content_ids(ids) == ids[end + 1:]
    assert parser.is_reasoning_end_streaming(ids, ids[end:end + 1])


# -- generated outputs through vLLM's parser (hypothesis) ----------------------------

_MARKERS = ("<think>", "</think>", *TOOL_MARKERS)
_text = st.lists(st.sampled_from(list("ab {}\":,\n<>/`é北") + ["<｜tool", "```", "think"]),
                 max_size=10).map("".join).filter(lambda t: not any(m in t for m in _MARKERS))
_args = st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=5), max_size=3)


@st.composite
def _case(draw):
    fmt = draw(st.sampled_from(["v3", "v31"]))
    write = v3_call if fmt == "v3" else v31_call
    calls = tuple((draw(st.sampled_from(TOOL_NAMES)),
                   json.dumps(draw(_args), ensure_ascii=False,
                              indent=draw(st.sampled_from([None, 2]))))
                  for _ in range(draw(st.integers(0, 2))))
    before, after = draw(_text), draw(_text)
    text = before + (B + "\n".join(write(n, a) for n, a in calls) + E + after if calls else after)
    reasoning = draw(st.none() | _text)
    if reasoning is not None:
        text = reasoning + "</think>" + text
    return Case("generated", fmt, text, before + after, calls, reasoning)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_case(), how=st.sampled_from(["tokens", "chars", "random0", "whole"]))
# Found by hypothesis (2026-12-02): an empty output had no random chunking at all.
@example(case=Case("generated", "v3", "", "", (), None), how="random0")
@example(case=Case("generated", "v31", "x", "x", (), None), how="random0")
def test_generated_outputs_through_vllm(case, how, managers):
    parser_cls = parser_for(case, managers)
    want = expected(case)
    assert run_non_streaming(parser_cls, case).key() == want.key()
    got = run_streaming(parser_cls, case, chunkings(case.text, load_tokenizer(
        tokenizer_for(case)), seeds=(0,))[how])
    assert got.problems == [] and got.key() == want.key()


@pytest.mark.parametrize("kwargs,thinking", [({}, False), ({"thinking": True}, True),
                                             ({"enable_thinking": True}, True),
                                             ({"thinking": False}, False)])
def test_v3_reasoning_switch(kwargs, thinking, managers):
    _, reasonings = managers
    parser = reasonings.get_reasoning_parser("deepseek-v3")(
        load_tokenizer("deepseek-v3.1"), chat_template_kwargs=kwargs)
    want = ("Hmm.", "A.") if thinking else (None, "Hmm.</think>A.")
    assert parser.extract_reasoning("Hmm.</think>A.", None) == want


_SOUP = ["<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
         "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<think>", "</think>", "function", "\n",
         "```json\n", "```", "{", "}", '"a"', ":", " ", "x", "<", "get_time", "`"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_SOUP), min_size=1, max_size=20),
       fmt=st.sampled_from(["v3", "v31"]), reasoning=st.sampled_from([None, ""]),
       thinking=st.booleans(), seed=st.integers(0, 99))
def test_malformed_markup_streams_like_it_parses(pieces, fmt, reasoning, thinking, seed,
                                                 managers):
    # No expectation can be written for marker soup, but both modes must agree on it,
    # under every chunking, without a protocol problem or a crash.
    case = Case("soup", fmt, "".join(pieces), reasoning=reasoning, thinking=thinking)
    parser_cls = parser_for(case, managers)
    want = run_non_streaming(parser_cls, case).key()
    tok = load_tokenizer(tokenizer_for(case))
    for how, chunks in chunkings(case.text, tok, seeds=(seed,)).items():
        got = run_streaming(parser_cls, case, chunks)
        assert got.problems == [] and got.key() == want, how


@pytest.mark.parametrize("with_reasoning", [False, True])
def test_tool_choice_none_keeps_markup_as_content(with_reasoning, managers):
    from ds_plugin._vllm.parsers import ChatCompletionRequest

    tools, reasonings = managers
    case = Case("none", "v3", "Hi." + B + v3_call("get_time", "{}") + E,
                reasoning="" if with_reasoning else None, thinking=False)
    parser_cls = compose(tools.get_tool_parser("deepseekv3"),
                         reasonings.get_reasoning_parser("deepseek-v3") if with_reasoning
                         else None)
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "q"}], tool_choice="none",
        tools=[{"type": "function", "function": {"name": "get_time", "parameters": {}}}])
    tok = load_tokenizer(tokenizer_for(case))
    parser = parser_cls(tok, request.tools, chat_template_kwargs={"thinking": False})
    assert parser.parse(case.text, request, enable_auto_tools=True)[1:] == (case.text, [])
    for chunks in chunkings(case.text, tok).values():
        parser = parser_cls(tok, request.tools, chat_template_kwargs={"thinking": False})
        deltas = [parser.parse_delta(t, ids, request, prompt_token_ids=[1],
                                     finished=i == len(chunks) - 1)
                  for i, (t, ids) in enumerate(chunks)]
        assert "".join(d.content or "" for d in deltas if d) == case.text
        assert not any(d.tool_calls for d in deltas if d)


@pytest.mark.parametrize("tool", ["deepseekv3", "deepseekv31"])
@pytest.mark.parametrize("parameters,field", [
    ({"type": 123}, "tools[1].function.parameters.type"),
    ({"type": "object", "properties": {"city": {"type": "strng"}}},
     "tools[1].function.parameters.properties.city.type"),
    ({"type": "object", "required": "city"}, "tools[1].function.parameters.required"),
])
def test_a_tool_schema_that_is_not_json_schema_is_refused(tool, parameters, field, managers):
    from ds_plugin._vllm.parsers import ChatCompletionRequest, VLLMValidationError

    tools, _ = managers
    good = {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}}
    bad = {"type": "function", "function": {"name": "broken", "parameters": parameters}}
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "tools": [good, bad]}
    request = ChatCompletionRequest.model_validate(body)  # vLLM's own model accepts it
    parser = tools.get_tool_parser(tool)(load_tokenizer("deepseek-v3"), request.tools)
    with pytest.raises(VLLMValidationError) as err:
        parser.adjust_request(request)
    assert err.value.parameter == field and "'broken'" in str(err.value)
    fine = ChatCompletionRequest.model_validate({**body, "tools": [good]})
    assert parser.adjust_request(fine) is fine
