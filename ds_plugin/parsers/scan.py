"""DeepSeek's special markers and the two text searches every parser here is built on.

The parsers work on text, never on token ids: vLLM hands a streaming parser deltas of
any size (one token, several tokens under MTP or `--stream-interval`, the whole output),
and a test harness may split anywhere, even inside a marker. A parser that only emits
text once it can no longer be the start of a marker gives the same result under every
split; `partial_tail` is the amount of text it must hold back for that.
"""

from __future__ import annotations

from collections.abc import Iterable

# Single tokens in every V3-family tokenizer (ids 128806-128809, 128814), not flagged as
# special, so they reach the parser as text whatever `skip_special_tokens` is.
CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
# Single tokens (128798, 128799) in the R1 and V3.1 tokenizers; plain text in V3's.
THINK_START = "<think>"
THINK_END = "</think>"

TOOL_MARKERS = (CALLS_BEGIN, CALLS_END, CALL_BEGIN, CALL_END, TOOL_SEP)


def find_first(text: str, markers: Iterable[str], start: int = 0) -> tuple[int, str] | None:
    """Position and value of the earliest occurrence of any marker in `text[start:]`."""
    best: tuple[int, str] | None = None
    for marker in markers:
        pos = text.find(marker, start)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, marker)
    return best


def partial_tail(text: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker.

    That suffix may still become a marker when more text arrives, so it must not be
    emitted yet. Every marker here starts with "<", which bounds the search.
    """
    markers = tuple(markers)
    longest = max(len(m) for m in markers) - 1
    start = max(0, len(text) - longest)
    pos = text.find("<", start)
    while pos >= 0:
        tail = text[pos:]
        if any(len(m) > len(tail) and m.startswith(tail) for m in markers):
            return len(tail)
        pos = text.find("<", pos + 1)
    return 0
