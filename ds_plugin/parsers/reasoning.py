"""Incremental split of DeepSeek output into reasoning and content (pure Python).

R1 and V3.1-with-thinking write `[<think>]REASONING</think>CONTENT`. The opening tag is
optional because the chat template usually puts `<think>\\n` into the prompt (R1-0528,
the updated R1 template, V3.1 with `thinking=true`), so the output starts inside the
thoughts. Rules, identical in streaming and non-streaming (one machine serves both):

* thinking on: a leading `<think>` is dropped; everything up to `</think>` is reasoning,
  everything after it content. Output with no `</think>` is all reasoning (the model was
  cut off while thinking: R1 always thinks first, and its template forces it to).
* a tool-call marker before `</think>` ends the reasoning too, and the marker starts the
  content: V3.1 may open its calls without closing its thoughts, and a call hidden in
  `reasoning_content` is a call lost.
* thinking off (V3.1 with `thinking=false`, V3): everything is content.

Nothing the model wrote is lost: text held back because it might start a marker ("3 <",
"</th") is released by the next feed or by `finish()` at the end of the output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ds_plugin.parsers.scan import (CALL_BEGIN, CALLS_BEGIN, THINK_END, THINK_START,
                                    find_first, partial_tail)

__all__ = ["ReasoningDelta", "ThinkStream", "split_reasoning"]

# What ends the reasoning; only THINK_END is consumed, a tool marker stays in content.
_REASONING_ENDS = (THINK_END, CALLS_BEGIN, CALL_BEGIN)
_START, _THINK, _CONTENT = range(3)


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""
    ended: bool = False  # the reasoning ended inside this feed

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


class ThinkStream:
    """Feed text in order; each `feed` returns the reasoning and content it settled.

    `atomic` names the markers the tokenizer writes as one token. A feed that ends on a
    token boundary (`aligned=True`) cannot end inside such a marker, so text that merely
    looks like its start ("<", "</th") is released at once instead of held.
    """

    def __init__(self, thinking: bool = True, atomic: Iterable[str] = ()):
        self.thinking = thinking
        self.reasoning = ""
        self.content = ""
        self._atomic = frozenset(atomic)
        self._buf = ""
        self._state = _START if thinking else _CONTENT

    @property
    def reasoning_ended(self) -> bool:
        return self._state == _CONTENT

    def feed(self, text: str, aligned: bool = False) -> ReasoningDelta:
        self._buf += text
        out = ReasoningDelta()
        if self._state == _START:
            if self._buf.startswith(THINK_START):
                self._buf = self._buf[len(THINK_START):]
                self._state = _THINK
            elif not THINK_START.startswith(self._buf) or (
                    self._buf and aligned and THINK_START in self._atomic):
                self._state = _THINK
        if self._state == _THINK:
            hit = find_first(self._buf, _REASONING_ENDS)
            if hit is None:
                markers = [m for m in _REASONING_ENDS if not (aligned and m in self._atomic)]
                keep = partial_tail(self._buf, markers) if markers else 0
                out.reasoning = self._buf[:len(self._buf) - keep]
                self._buf = self._buf[len(self._buf) - keep:]
            else:
                pos, marker = hit
                out.reasoning = self._buf[:pos]
                self._buf = self._buf[pos + (len(marker) if marker == THINK_END else 0):]
                self._state = _CONTENT
                out.ended = True
        if self._state == _CONTENT:
            out.content, self._buf = self._buf, ""
        self.reasoning += out.reasoning
        self.content += out.content
        return out

    def finish(self) -> ReasoningDelta:
        """End of output: text held back only because it might start a marker is reasoning
        (the thoughts were still open: the output was cut off, e.g. by max_tokens)."""
        out = ReasoningDelta()
        if self._state != _CONTENT:
            out.reasoning, self._buf = self._buf, ""
            self._state = _THINK
        self.reasoning += out.reasoning
        return out


def split_reasoning(text: str, thinking: bool = True) -> tuple[str, str]:
    """Non-streaming split: (reasoning, content), each possibly empty."""
    stream = ThinkStream(thinking)
    stream.feed(text)
    stream.finish()
    return stream.reasoning, stream.content
