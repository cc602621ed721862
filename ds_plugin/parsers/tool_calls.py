"""Incremental parser for DeepSeek tool calls, V3/R1 and V3.1 formats (pure Python).

V3 / R1 (`DEEPSEEK_V3`):
    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\nARGS\\n```<｜tool▁call▁end｜>
    ...more calls, usually separated by "\\n"...<｜tool▁calls▁end｜>
V3.1 (`DEEPSEEK_V31`):
    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>

One state machine serves both modes: non-streaming is `feed(whole_text)`, streaming is
`feed(delta)` per delta, so the two agree by construction, and the machine only emits
text that no later text can reinterpret, so the result does not depend on where the
deltas split. What it guarantees:

* Text before, between (other than whitespace) and after the calls is content, kept.
* A call is reported as soon as its name is complete; its arguments stream as they
  arrive, verbatim (never re-serialised, never a placeholder `{}`), multi-line included.
  JSON validity is not required: what the model wrote is what the client gets.
* A call whose head is malformed (no separator, empty name, over 256 characters) comes
  back as content, raw.
* Output cut off inside a call (max_tokens) keeps the calls with complete names; the
  cut call's arguments are what was generated, less a trailing part that could still
  have been the closing fence or marker. Content that merely looks like the start of a
  marker ("x <") is held back while more may come and released by `finish()`, or at
  once when the feed ends on a token boundary and the marker is a single token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ds_plugin.parsers.scan import (CALL_BEGIN, CALL_END, CALLS_BEGIN, CALLS_END,
                                    TOOL_SEP, find_first, partial_tail)

__all__ = ["ToolFormat", "DEEPSEEK_V3", "DEEPSEEK_V31", "ToolCall", "ToolDelta",
           "ToolCallStream", "parse_tool_calls"]


@dataclass(frozen=True)
class ToolFormat:
    """How one call is written between CALL_BEGIN and CALL_END.

    typed: V3/R1 write `TYPE<sep>NAME\\n` then arguments in an optional ```json fence;
    V3.1 writes `NAME<sep>` then bare arguments.
    """

    name: str
    typed: bool


DEEPSEEK_V3 = ToolFormat("deepseek_v3", typed=True)
DEEPSEEK_V31 = ToolFormat("deepseek_v31", typed=False)

# Opening fences the V3 format may put before the arguments.
_OPEN_FENCES = ("```json\n", "```\n")
# The closing fence, stripped from fenced arguments when the call ends.
_CLOSE_FENCE = re.compile(r"\s*```\s*\Z")
# Characters the closing fence is made of; held back while they could be one.
_FENCE_CHARS = frozenset(" \t\r\n`")
# Markers that end a call's arguments: its own end, or (when the model forgets it) the
# next call or the end of the block, which are then parsed again.
_ARG_ENDS = (CALL_END, CALL_BEGIN, CALLS_END)
# Markers expected between calls.
_BLOCK_MARKERS = (CALL_BEGIN, CALLS_END, CALLS_BEGIN)

# A call head ("function<｜tool▁sep｜>NAME\n" or "NAME<｜tool▁sep｜>") is short (OpenAI
# caps names at 64 characters); one this long without its delimiter is returned as
# content rather than held back until the end of the output.
_MAX_HEAD = 256

_TEXT, _BLOCK, _HEAD, _FENCE, _ARGS = range(5)


@dataclass
class ToolCall:
    name: str
    arguments: str = ""
    complete: bool = False


@dataclass
class ToolDelta:
    """What one `feed` produced: content text and, per call index, its new pieces.

    `calls` holds (index, name, arguments): `name` is set only in the first piece of a
    call, `arguments` is the next slice of its argument string ("" when none yet).
    """

    content: str = ""
    calls: list[tuple[int, str | None, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls)

    def _add_call_piece(self, index: int, name: str | None, args: str) -> None:
        if self.calls and self.calls[-1][0] == index:
            last = self.calls[-1]
            self.calls[-1] = (index, last[1], last[2] + args)
        else:
            self.calls.append((index, name, args))


class ToolCallStream:
    """Feed text in order; each `feed` returns the content and call pieces it settled.

    `atomic` names the markers the tokenizer writes as one token; a feed with
    `aligned=True` ends on a token boundary, so it cannot end inside one of them (see
    ds_plugin/parsers/tokens.py).
    """

    def __init__(self, fmt: ToolFormat, atomic: frozenset[str] = frozenset()):
        self.fmt = fmt
        self._atomic = atomic
        self._aligned = False
        self.calls: list[ToolCall] = []
        self.content = ""
        self.markup_seen = False  # any tool markup consumed (even if no call resulted)
        self._buf = ""
        self._state = _TEXT
        self._head = ""  # raw text of the call head, returned as content if malformed
        self._fenced = False
        self._args_sent = 0  # chars of the argument text (at _buf[0]) already emitted

    def feed(self, text: str, aligned: bool = False) -> ToolDelta:
        self._buf += text
        self._aligned = aligned
        out = ToolDelta()
        step = (self._step_text, self._step_block, self._step_head, self._step_fence,
                self._step_args)
        while step[self._state](out):
            pass
        self.content += out.content
        return out

    def finish(self) -> ToolDelta:
        """End of output: text held back only because it might start a marker is content.

        What else is pending at the end belongs to a call cut off by max_tokens (a
        partial head, opening fence or closing fence/marker) and is not reported.
        """
        out = ToolDelta()
        if self._state == _TEXT:
            out.content, self._buf = self._buf, ""
        self.content += out.content
        return out

    def _may_start(self, markers: tuple[str, ...]) -> tuple[str, ...]:
        """Those of `markers` that the end of the buffer may still be the start of."""
        if not self._aligned:
            return markers
        return tuple(m for m in markers if m not in self._atomic)

    def _partial_tail(self, text: str, markers: tuple[str, ...]) -> int:
        markers = self._may_start(markers)
        return partial_tail(text, markers) if markers else 0

    # -- states: each consumes what it can settle, returns True when it changed state

    def _step_text(self, out: ToolDelta) -> bool:
        hit = find_first(self._buf, (CALLS_BEGIN, CALL_BEGIN))
        if hit is None:
            keep = self._partial_tail(self._buf, (CALLS_BEGIN, CALL_BEGIN))
            out.content += self._buf[:len(self._buf) - keep]
            self._buf = self._buf[len(self._buf) - keep:]
            return False
        pos, marker = hit
        out.content += self._buf[:pos]
        self._buf = self._buf[pos + len(marker):]
        self.markup_seen = True
        if marker == CALLS_BEGIN:
            self._state = _BLOCK
        else:
            self._open_call()
        return True

    def _step_block(self, out: ToolDelta) -> bool:
        # Between calls only whitespace is expected. Anything else ends the block: it is
        # content (TEXT state), where a later call marker is still recognised.
        rest = self._buf.lstrip()
        if not rest:
            return False
        if rest.startswith(CALL_BEGIN):
            self._buf = rest[len(CALL_BEGIN):]
            self._open_call()
            return True
        if rest.startswith(CALLS_END):
            self._buf = rest[len(CALLS_END):]
            self._state = _TEXT
            return True
        if rest.startswith(CALLS_BEGIN):  # a repeated block opener: nothing to report
            self._buf = rest[len(CALLS_BEGIN):]
            return True
        if any(m.startswith(rest) for m in self._may_start(_BLOCK_MARKERS)):
            return False
        self._state = _TEXT
        return True

    def _open_call(self) -> None:
        self._state = _HEAD
        self._head = CALL_BEGIN

    def _step_head(self, out: ToolDelta) -> bool:
        # Decided on the first _MAX_HEAD characters only, so the outcome cannot depend on
        # how much text had arrived when it was taken.
        buf = self._buf[:_MAX_HEAD]
        stop = find_first(buf, _ARG_ENDS)
        limit = stop[0] if stop else len(buf)
        sep = buf.find(TOOL_SEP, 0, limit)
        if sep >= 0:
            if not self.fmt.typed:
                name, consumed = buf[:sep], sep + len(TOOL_SEP)
            else:
                newline = buf.find("\n", sep, limit)
                if newline >= 0:
                    name, consumed = buf[sep + len(TOOL_SEP):newline], newline + 1
                elif stop is not None:  # ended before the newline: a call without args
                    name, consumed = buf[sep + len(TOOL_SEP):stop[0]], stop[0]
                else:
                    name, consumed = "", 0  # the name is not complete yet
            if name.strip():
                self._start_call(out, name.strip(), consumed)
                return True
        if stop is None and len(self._buf) < _MAX_HEAD:
            return False  # wait: the head may still complete, or turn out malformed
        # No separator or an empty name before the call ended, or no end in sight: not a
        # call. Return it to the client as written.
        end = stop[0] + (len(CALL_END) if stop[1] == CALL_END else 0) if stop else len(buf)
        out.content += self._head + buf[:end]
        self._buf = self._buf[end:]
        self._state = _BLOCK if stop else _TEXT
        return True

    def _start_call(self, out: ToolDelta, name: str, consumed: int) -> None:
        self.calls.append(ToolCall(name=name))
        out._add_call_piece(len(self.calls) - 1, name, "")
        self._buf = self._buf[consumed:]
        self._state = _FENCE if self.fmt.typed else _ARGS
        self._fenced = False
        self._args_sent = 0

    def _step_fence(self, out: ToolDelta) -> bool:
        for fence in _OPEN_FENCES:
            if self._buf.startswith(fence):
                self._buf = self._buf[len(fence):]
                self._fenced = True
                self._state = _ARGS
                return True
        if any(f.startswith(self._buf) for f in _OPEN_FENCES):
            return False  # still could be a fence
        self._state = _ARGS
        return True

    def _step_args(self, out: ToolDelta) -> bool:
        buf = self._buf
        # Arguments stay in _buf until the call ends; what was already sent holds no
        # marker (a possible one is held back), so only the rest is searched: linear
        # time however many deltas a long argument string arrives in.
        stop = find_first(buf, _ARG_ENDS, self._args_sent)
        if stop is None:
            ready = len(buf) - self._held_back(buf)
            self._send_args(out, buf[:ready])
            return False
        args = buf[:stop[0]]
        if self._fenced:
            args = _CLOSE_FENCE.sub("", args)
        self._send_args(out, args)
        self.calls[-1].complete = True
        self._buf = buf[stop[0] + (len(CALL_END) if stop[1] == CALL_END else 0):]
        self._state = _BLOCK
        return True

    def _held_back(self, buf: str) -> int:
        held = self._partial_tail(buf, _ARG_ENDS)
        if self._fenced:  # also hold whitespace/backticks that may open the close fence
            start = len(buf) - held
            while start > 0 and buf[start - 1] in _FENCE_CHARS:
                start -= 1
            held = len(buf) - start
        return held

    def _send_args(self, out: ToolDelta, settled: str) -> None:
        piece = settled[self._args_sent:]
        if piece:
            self._args_sent = len(settled)
            self.calls[-1].arguments += piece
            out._add_call_piece(len(self.calls) - 1, None, piece)


@dataclass
class ToolCallResult:
    content: str
    calls: list[ToolCall]
    markup_seen: bool


def parse_tool_calls(text: str, fmt: ToolFormat,
                     atomic: frozenset[str] = frozenset()) -> ToolCallResult:
    """Non-streaming parse: the same machine fed the whole output at once (which ends on
    a token boundary, as the last delta of a stream does)."""
    stream = ToolCallStream(fmt, atomic)
    stream.feed(text, aligned=True)
    stream.finish()
    return ToolCallResult(stream.content, stream.calls, stream.markup_seen)
