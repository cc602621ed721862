"""ds_plugin/parsers/tool_calls.py: the pure tool-call machine, both formats.

Expectations come from the hand-written corpus and from the generator below (which
builds the raw text from known calls), never from the parser itself.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds_plugin.parsers.scan import TOOL_MARKERS
from ds_plugin.parsers.tool_calls import (DEEPSEEK_V3, DEEPSEEK_V31, ToolCallStream,
                                          parse_tool_calls)
from tests.helpers.parser_corpus import B, E, cases, v3_call, v31_call

FORMATS = {"v3": DEEPSEEK_V3, "v31": DEEPSEEK_V31}
TOOL_CASES = [c for c in cases() if c.reasoning is None]


def stream(text: str, fmt, cuts: list[int]):
    """Feed `text` split at `cuts`; return (content, [(name, args)], pieces)."""
    s = ToolCallStream(fmt)
    content, names, args, pieces = "", {}, {}, []
    feeds = [s.feed(text[lo:hi]) for lo, hi in zip([0] + cuts, cuts + [len(text)])]
    for d in feeds + [s.finish()]:
        content += d.content
        for index, name, piece in d.calls:
            pieces.append((index, name, piece))
            if name is not None:
                assert index not in names, f"call {index} named twice"
                names[index] = name
            assert index in names, f"arguments for call {index} before its name"
            args[index] = args.get(index, "") + piece
    assert sorted(names) == list(range(len(names)))
    return content, [(names[i], args.get(i, "")) for i in sorted(names)], pieces


def all_cuts(text: str, seed: int) -> dict[str, list[int]]:
    rng = random.Random(seed)
    return {"chars": list(range(1, len(text))), "whole": [],
            "random": sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 7)))}


@pytest.mark.parametrize("case", TOOL_CASES, ids=lambda c: f"{c.fmt}-{c.name}")
def test_corpus_non_streaming(case):
    result = parse_tool_calls(case.text, FORMATS[case.fmt])
    assert result.content == case.content
    assert [(c.name, c.arguments) for c in result.calls] == list(case.calls)


@pytest.mark.parametrize("case", TOOL_CASES, ids=lambda c: f"{c.fmt}-{c.name}")
def test_corpus_streaming_every_split(case):
    for label, cuts in all_cuts(case.text, seed=len(case.name)).items():
        content, calls, _ = stream(case.text, FORMATS[case.fmt], cuts)
        assert (content, calls) == (case.content, list(case.calls)), label


def test_whole_call_in_one_delta_is_not_dropped():
    # The vLLM/SGLang failure: a delta holding a complete call (MTP, stream intervals).
    text = B + v3_call("a", '{"x": 1}') + "\n" + v3_call("b", '{"y": 2}') + E
    cuts = [len(B), len(B) + len(v3_call("a", '{"x": 1}')) + 1]
    content, calls, pieces = stream(text, DEEPSEEK_V3, cuts)
    assert calls == [("a", '{"x": 1}'), ("b", '{"y": 2}')]
    assert content == ""


def test_arguments_stream_before_the_call_ends():
    text = B + v31_call("f", '{"long": "' + "x" * 50 + '"}')
    s = ToolCallStream(DEEPSEEK_V31)
    s.feed(text[:-40])
    assert s.calls[0].arguments.startswith('{"long": "xxx') and not s.calls[0].complete
    assert "{}" not in [c.arguments for c in s.calls]


def test_fence_held_back_until_resolved():
    s = ToolCallStream(DEEPSEEK_V3)
    s.feed(B + v3_call("f", '{"a": 1}')[:-len("```<｜tool▁call▁end｜>")])  # ends '}\n'
    assert s.calls[0].arguments == '{"a": 1}'  # "\n" held: may open the closing fence
    s.feed("x")  # it did not: released verbatim
    assert s.calls[0].arguments == '{"a": 1}\nx'


def test_text_like_a_marker_start_is_held_then_released():
    # "<｜tool▁ca" may still become a marker; finish() (vLLM's end-of-stream call for our
    # tool parser) releases it, so a cut-off output keeps its text in both modes.
    text = "Answer: x<｜tool▁ca"
    s = ToolCallStream(DEEPSEEK_V3)
    assert s.feed(text).content == "Answer: x"
    assert s.finish().content == "<｜tool▁ca"
    assert parse_tool_calls(text, DEEPSEEK_V3).content == text
    assert stream(text, DEEPSEEK_V3, list(range(1, len(text))))[0] == text
    assert parse_tool_calls("a < b <", DEEPSEEK_V3).content == "a < b <"


# -- generated calls (hypothesis) ---------------------------------------------------

_ALPHABET = st.sampled_from(list("ab {}[]\":,\n<>｜`é北☀\\") + ["<｜tool", "▁call", "```"])
_free_text = st.lists(_ALPHABET, max_size=12).map("".join).filter(
    lambda t: not any(m in t for m in TOOL_MARKERS))
_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                     lambda kids: st.lists(kids, max_size=3)
                     | st.dictionaries(st.text(max_size=4), kids, max_size=3),
                     max_leaves=6)


@st.composite
def _args(draw, fmt: str):
    if draw(st.booleans()):
        return json.dumps(draw(st.dictionaries(st.text(max_size=5), _json, max_size=4)),
                          ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    raw = draw(_free_text)
    # The V3 closing fence may be preceded by whitespace, which belongs to it.
    return raw.rstrip(" \t\r\n`") if fmt == "v3" else raw


@st.composite
def _output(draw):
    fmt = draw(st.sampled_from(["v3", "v31"]))
    calls = draw(st.lists(st.tuples(_name, _args(fmt)), min_size=0, max_size=3))
    before, after = draw(_free_text), draw(_free_text)
    sep = draw(st.sampled_from(["", "\n", " \n "]))
    write = v3_call if fmt == "v3" else v31_call
    if not calls:
        return fmt, before + after, before + after, []
    body = sep.join(write(n, a) for n, a in calls)
    return fmt, before + B + body + E + after, before + after, calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_output(), st.randoms(use_true_random=False))
def test_generated_outputs_parse_exactly_under_any_split(out, rng):
    fmt, text, content, calls = out
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 20)))) \
        if len(text) > 1 else []
    result = parse_tool_calls(text, FORMATS[fmt])
    assert (result.content, [(c.name, c.arguments) for c in result.calls]) == (content, calls)
    assert stream(text, FORMATS[fmt], cuts)[:2] == (content, calls)


@settings(max_examples=200, deadline=None)
@given(_output(), st.floats(0, 1), st.randoms(use_true_random=False))
def test_cut_off_output_streams_like_it_parses(out, frac, rng):
    # max_tokens may stop the model anywhere: both modes must still agree, and what is
    # reported must be a prefix of what the full output would report.
    fmt, text, _, calls = out
    cut = text[:int(len(text) * frac)]
    cuts = sorted(rng.sample(range(1, len(cut)), min(len(cut) - 1, 9))) if len(cut) > 1 else []
    result = parse_tool_calls(cut, FORMATS[fmt])
    got = [(c.name, c.arguments) for c in result.calls]
    assert stream(cut, FORMATS[fmt], cuts)[:2] == (result.content, got)
    assert len(got) <= len(calls)
    for (name, args), (full_name, full_args) in zip(got, calls):
        assert name == full_name and full_args.startswith(args)


@pytest.mark.parametrize("fmt", [DEEPSEEK_V3, DEEPSEEK_V31])
def test_runaway_call_head_becomes_content(fmt):
    # A call opener followed by prose and no separator: returned, not held to the end.
    prose = "I cannot call tools here, so here is the answer directly. " * 6
    text = "<｜tool▁call▁begin｜>" + prose
    want = parse_tool_calls(text, fmt)
    assert want.calls == [] and want.content == text
    for cuts in all_cuts(text, seed=3).values():
        assert stream(text, fmt, cuts)[:2] == (text, [])
    # A head that completes inside the window is still a call.
    call = (v3_call if fmt is DEEPSEEK_V3 else v31_call)("f", "{}")
    assert [c.name for c in parse_tool_calls(call, fmt).calls] == ["f"]
