"""Nothing the model wrote is lost, through vLLM's own serving parser (DelegatingParser).

For any output and any token-aligned chunking (one token per delta, several, as MTP or
--stream-interval deliver them, the whole output), the reasoning and content a client
reassembles equal the output minus only the markers that were consumed: a leading
`<think>` and the `</think>` that ended the thoughts. Both reasoning parsers, under
both names, on the real tokenizers. Where the tokenizer writes every marker as one token
(R1, V3.1) nothing is held back even before vLLM signals the end of the stream; with
V3's tokenizer (`<think>` as plain text) the end-of-stream hook releases it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ds_plugin
from ds_plugin.parsers.scan import (CALL_BEGIN, CALLS_BEGIN, THINK_END, THINK_START,
                                    TOOL_MARKERS, find_first)
from tests.helpers.parser_replay import compose, serving_tokenizer

pytest.importorskip("vllm")

# Markers, their fragments and text that tokenizes next to them in several ways.
_PIECES = [THINK_START, THINK_END, *TOOL_MARKERS, "<", "</", "</th", "think", "ink>", ">",
           "<｜", "｜", "tool", "▁", "3", " ", "\n", "a", "é", "北", "🤖", "`", "{", "}"]
_outputs = st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)

# (parser name, tokenizer, chat_template_kwargs): whether the output starts inside the
# thoughts follows from the prompt the real chat template renders.
SETUPS = [
    ("deepseek-r1", "deepseek-r1", {}), ("deepseek_r1", "deepseek-r1", {}),
    ("deepseek-r1", "deepseek-v3", {}),
    ("deepseek-v3", "deepseek-v3.1", {"thinking": True}),
    ("deepseek_v3", "deepseek-v3.1", {"thinking": True}),
    ("deepseek-v3", "deepseek-v3.1", {"thinking": False}),
    ("deepseek_v3", "deepseek-v3.1", {}),
]


def expected(text: str, thinking: bool) -> tuple[str, str]:
    """The split by the rules of ds_plugin/parsers/reasoning.py, written out again."""
    if not thinking:
        return "", text
    rest = text[len(THINK_START):] if text.startswith(THINK_START) else text
    hit = find_first(rest, (THINK_END, CALLS_BEGIN, CALL_BEGIN))
    if hit is None:
        return rest, ""
    pos, marker = hit
    return rest[:pos], rest[pos + (len(marker) if marker == THINK_END else 0):]


@pytest.fixture(scope="module")
def reasoning_parsers():
    ds_plugin.register()
    from tests.helpers.vllm_api import ReasoningParserManager

    return ReasoningParserManager


def _prompt(tok, kwargs) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False,
                                   add_generation_prompt=True, **kwargs)
    return tok(text, add_special_tokens=False)["input_ids"]


def _token_chunks(text: str, tok, sizes: list[int]) -> list[tuple[str, list[int]]]:
    """Deltas of whole tokens, `sizes[k]` tokens in the k-th (cycled)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, ends = enc["input_ids"], [end for _, end in enc["offset_mapping"]]
    chunks, i, lo, k = [], 0, 0, 0
    while i < len(ids):
        j = min(len(ids), i + sizes[k % len(sizes)])
        # Tokens sharing an end offset (byte pieces of one character) travel together.
        while j < len(ids) and ends[j] == ends[j - 1]:
            j += 1
        chunks.append((text[lo:ends[j - 1]], ids[i:j]))
        lo, i, k = ends[j - 1], j, k + 1
    assert lo == len(text)
    return chunks


def _replay(parser_cls, tok, kwargs, chunks, request):
    parser = parser_cls(tok, None, chat_template_kwargs=kwargs, model_config=None)
    prompt = _prompt(tok, kwargs)
    reasoning = content = ""
    for text, ids in chunks:
        delta = parser.parse_delta(text, ids, request, prompt_token_ids=prompt,
                                   finished=False)
        if delta is not None:
            reasoning += delta.reasoning or ""
            content += delta.content or ""
    before_end = (reasoning, content)
    # vLLM's last engine output of a stream; here it carries no new text.
    delta = parser.parse_delta("", [], request, prompt_token_ids=prompt, finished=True)
    if delta is not None:
        reasoning += delta.reasoning or ""
        content += delta.content or ""
    return before_end, (reasoning, content)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_outputs, sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       setup=st.sampled_from(SETUPS))
def test_reassembled_output_is_the_model_text_minus_markers(text, sizes, setup,
                                                             reasoning_parsers):
    from ds_plugin._vllm.parsers import ChatCompletionRequest

    name, tokenizer, kwargs = setup
    tok = serving_tokenizer(tokenizer)
    parser_cls = compose(None, reasoning_parsers.get_reasoning_parser(name))
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "q"}],
                                    chat_template_kwargs=kwargs)
    thinking = name.replace("_", "-") == "deepseek-r1" or bool(kwargs.get("thinking"))
    want = expected(text, thinking)
    parser = parser_cls(tok, None, chat_template_kwargs=kwargs, model_config=None)
    parser.is_reasoning_end(_prompt(tok, kwargs))
    reasoning, content, _ = parser.parse(text, request)
    assert ((reasoning or ""), (content or "")) == want
    for chunks in (_token_chunks(text, tok, sizes), _token_chunks(text, tok, [1 << 30])):
        before_end, streamed = _replay(parser_cls, tok, kwargs, chunks, request)
        assert streamed == want
        if tokenizer != "deepseek-v3":  # every marker a single token: nothing held
            assert before_end == want


@pytest.mark.parametrize("name", ["deepseek-r1", "deepseek_r1"])
def test_cut_off_thought_ending_in_a_marker_prefix_keeps_it(name, reasoning_parsers):
    # An R1 thought cut by max_tokens right after "<": vLLM's in-tree parser returns
    # the "<"; so must ours, non-streaming and streaming, on either tokenizer.
    from ds_plugin._vllm.parsers import ChatCompletionRequest

    text = "still weighing 3 <"
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "q"}])
    parser_cls = compose(None, reasoning_parsers.get_reasoning_parser(name))
    for tokenizer in ("deepseek-r1", "deepseek-v3"):
        tok = serving_tokenizer(tokenizer)
        parser = parser_cls(tok, None, model_config=None)
        assert parser.parse(text, request)[:2] == (text, None)
        _, streamed = _replay(parser_cls, tok, {}, _token_chunks(text, tok, [1]), request)
        assert streamed == (text, "")


@pytest.mark.parametrize("tool,reasoning,fmt,thinking", [
    ("deepseekv3", "deepseek-r1", "v3", True), ("deepseek_v31", "deepseek_v3", "v31", True),
    ("deepseekv31", "deepseek-v3", "v31", False)])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_PIECES + ["function", "get_time", "```json\n",
                                                  "\n```", '{"a": 1}']), max_size=16),
       sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4))
@example(pieces=["a", " ", "<"], sizes=[1])
@example(pieces=[THINK_END, "x", "<｜"], sizes=[2])
def test_token_aligned_stream_holds_nothing_back_with_tool_calls(tool, reasoning, fmt,
                                                                 thinking, pieces, sizes):
    # With the tool parser in the pair, whatever the markup: the stream has said all
    # the non-streaming response says before vLLM signals the end of the stream.
    from tests.helpers.parser_corpus import Case
    from tests.helpers.parser_replay import (make_request, prompt_ids, run_non_streaming,
                                             tokenizer_for)
    from tests.helpers.vllm_api import ReasoningParserManager, ToolParserManager

    ds_plugin.register()
    case = Case("aligned", fmt, "".join(pieces), reasoning="", thinking=thinking)
    parser_cls = compose(ToolParserManager.get_tool_parser(tool),
                         ReasoningParserManager.get_reasoning_parser(reasoning))
    want = run_non_streaming(parser_cls, case)
    tok = serving_tokenizer(tokenizer_for(case))
    request = make_request(case)
    parser = parser_cls(tok, request.tools, chat_template_kwargs={"thinking": thinking},
                        model_config=None)
    reasoning_text, content, calls = "", "", {}
    for text, ids in _token_chunks(case.text, tok, sizes):
        delta = parser.parse_delta(text, ids, request, prompt_token_ids=prompt_ids(case),
                                   finished=False)
        if delta is None:
            continue
        reasoning_text += delta.reasoning or ""
        content += delta.content or ""
        for tc in delta.tool_calls:
            name, args = calls.get(tc.index, (None, ""))
            calls[tc.index] = (name or tc.function.name, args + (tc.function.arguments or ""))
    got = (reasoning_text, content if content.strip() else "", [calls[i] for i in sorted(calls)])
    assert got == (want.reasoning, want.content, want.calls)
    last = parser.parse_delta("", [], request, prompt_token_ids=prompt_ids(case), finished=True)
    assert not (last and (last.reasoning or last.content or last.tool_calls))
