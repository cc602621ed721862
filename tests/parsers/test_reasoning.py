"""ds_plugin/parsers/reasoning.py: the pure reasoning/content split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ds_plugin.parsers.reasoning import ThinkStream, split_reasoning
from ds_plugin.parsers.scan import CALLS_BEGIN, THINK_END, THINK_START

MARKERS = (THINK_START, THINK_END, CALLS_BEGIN, "<｜tool▁call▁begin｜>")


@pytest.mark.parametrize("text,thinking,want", [
    ("<think>\nplan\n</think>\n\nanswer", True, ("\nplan\n", "\n\nanswer")),
    ("plan</think>answer", True, ("plan", "answer")),  # <think> was in the prompt
    ("plan, cut off", True, ("plan, cut off", "")),  # never closed: still thinking
    ("<think></think>answer", True, ("", "answer")),
    ("plan" + CALLS_BEGIN + "x", True, ("plan", CALLS_BEGIN + "x")),  # call ends thoughts
    ("plan</think>a</think>b", True, ("plan", "a</think>b")),  # only the first tag ends
    ("an answer, no thoughts", False, ("", "an answer, no thoughts")),
    ("<think>x</think>y", False, ("", "<think>x</think>y")),  # thinking off: verbatim
    ("<thinking about it", True, ("<thinking about it", "")),  # not the tag
    # Cut off (max_tokens) on text that could have begun a marker: kept, not dropped.
    ("still weighing 3 <", True, ("still weighing 3 <", "")),
    ("a</thi", True, ("a</thi", "")),
    ("<th", True, ("<th", "")),
    ("<think>x <｜tool", True, ("x <｜tool", "")),
    ("x</think>y <｜", True, ("x", "y <｜")),
])
def test_split(text, thinking, want):
    assert split_reasoning(text, thinking) == want
    for cut in range(len(text) + 1):  # every two-piece split streams the same
        s = ThinkStream(thinking)
        s.feed(text[:cut])
        s.feed(text[cut:])
        s.finish()
        assert (s.reasoning, s.content) == want, cut


def test_end_reported_once_in_the_delta_that_ends():
    s = ThinkStream()
    assert [s.feed(p).ended for p in ("<think>a", "b</th", "ink>c", "d")] == [
        False, False, True, False]
    assert s.reasoning_ended


def test_held_text_is_released_by_the_next_feed_or_finish():
    s = ThinkStream()
    assert s.feed("3 <").reasoning == "3 "  # "<" may start "</think>": held
    assert s.feed("4").reasoning == "<4"
    assert s.feed(" </th").reasoning == " "
    assert s.finish().reasoning == "</th"
    assert s.reasoning == "3 <4 </th" and not s.finish()


def test_aligned_feed_releases_text_that_only_looks_like_a_single_token_marker():
    # With </think> and the tool markers as single tokens, a feed ending on a token
    # boundary cannot end inside one of them.
    s = ThinkStream(atomic=MARKERS)
    assert s.feed("<", aligned=True).reasoning == "<"  # not "<think>" either
    assert s.feed("3 </th", aligned=True).reasoning == "3 </th"
    assert s.feed("x <｜", aligned=True).reasoning == "x <｜"
    assert s.feed("y <", aligned=False).reasoning == "y "  # mid-token: held
    assert s.feed("</think>z <", aligned=True).content == "z <"
    assert (s.reasoning, s.content) == ("<3 </thx <｜y <", "z <")
    # A marker the tokenizer spells in several tokens (V3: </think>) is still held.
    v3 = ThinkStream(atomic=(CALLS_BEGIN,))
    assert v3.feed("a </th", aligned=True).reasoning == "a "
    assert v3.feed("ink>b", aligned=True).content == "b"


_free = st.text(st.sampled_from(list("ab <>/\n｜think`é")), max_size=15).filter(
    lambda t: not any(m in t for m in MARKERS))


@settings(max_examples=300, deadline=None)
@given(_free, _free, st.booleans(), st.booleans(), st.randoms(use_true_random=False))
def test_generated_split_under_any_chunking(thought, answer, tagged, closed, rng):
    # Untagged thoughts may start like the tag ("<th"), cut-off ones may end like a
    # marker ("3 </th"): neither is lost.
    text = (THINK_START if tagged else "") + thought + (THINK_END + answer if closed else "")
    want = (thought, answer if closed else "")
    assert split_reasoning(text) == want
    s = ThinkStream()
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 6)))
    for lo, hi in zip([0] + cuts, cuts + [len(text)]):
        s.feed(text[lo:hi])
    s.finish()
    assert (s.reasoning, s.content) == want
