"""vLLM tool parsers for DeepSeek-V3/R1 and V3.1: thin adapters over `tool_calls`.

Registered as `deepseekv3` / `deepseekv31` (SGLang's names) and over vLLM's in-tree
`deepseek_v3` / `deepseek_v31`. All parsing is `ToolCallStream`; this file converts its
output to vLLM's types and keeps the bookkeeping vLLM's serving layer reads
(`prev_tool_call_arr`, `streamed_args_for_tool`: after every delta they equal what was
streamed, so vLLM's end-of-stream "unstreamed arguments" top-up adds nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ds_plugin._vllm.parsers import (DeltaFunctionCall, DeltaMessage, DeltaToolCall,
                                     ExtractedToolCallInformation, FunctionCall, ToolCall,
                                     ToolParser, make_tool_call_id)
from ds_plugin.parsers.tool_calls import (DEEPSEEK_V3, DEEPSEEK_V31, ToolCallStream,
                                          ToolFormat, parse_tool_calls)

__all__ = ["DeepSeekV3ToolParser", "DeepSeekV31ToolParser"]

log = logging.getLogger("vllm.ds_plugin")


def _tools_off(request) -> bool:
    # vLLM consults a flagged parser even for tool_choice="none"; the text stays raw then.
    return getattr(request, "tool_choice", None) == "none"


class _DeepSeekToolParser(ToolParser):
    FORMAT: ToolFormat
    # Makes vLLM's DelegatingParser call finish_streaming() at the end of a stream, the
    # only way a tool parser learns that the output is complete (vLLM's own incremental
    # parsers use it the same way). Parsing stays incremental over text either way.
    engine_based_streaming = True

    def __init__(self, tokenizer, tools=None):
        super().__init__(tokenizer, tools)
        self._stream = ToolCallStream(self.FORMAT)
        self._ids: list[str] = []

    def _warn_unknown(self, name: str) -> None:
        # The call is still returned: the client, not the parser, owns that decision.
        known = {getattr(getattr(t, "function", None), "name", None) or getattr(t, "name", None)
                 for t in self.tools}
        known.discard(None)
        if known and name not in known:
            log.warning("ds-plugin: model called unknown tool %r (request offers %s)",
                        name, sorted(known))

    def extract_tool_calls(self, model_output: str, request):
        if _tools_off(request):
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                     content=model_output)
        result = parse_tool_calls(model_output, self.FORMAT)
        calls = []
        for call in result.calls:
            self._warn_unknown(call.name)
            calls.append(ToolCall(id=make_tool_call_id(), type="function",
                                       function=FunctionCall(name=call.name,
                                                                  arguments=call.arguments)))
        # Markup that formed no call (e.g. a cut-off `<｜tool▁calls▁begin｜>`) is not
        # content in streaming either; reporting `tools_called` with an empty list makes
        # vLLM use our content. vLLM 0.32 derives finish_reason from the list, so an
        # empty list never yields `tool_calls`.
        return ExtractedToolCallInformation(
            tools_called=bool(calls) or result.markup_seen,
            tool_calls=calls,
            content=result.content or None,
        )

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                     delta_text: str, previous_token_ids: Sequence[int],
                                     current_token_ids: Sequence[int],
                                     delta_token_ids: Sequence[int], request):
        if _tools_off(request):
            return DeltaMessage(content=delta_text) if delta_text else None
        return self._to_delta(self._stream.feed(delta_text))

    def finish_streaming(self):
        # vLLM calls this once the output is complete, because engine_based_streaming.
        return self._to_delta(self._stream.finish())

    def _to_delta(self, delta):
        if not delta:
            return None
        tool_calls = []
        for index, name, args in delta.calls:
            if name is not None:
                self._warn_unknown(name)
                self._ids.append(make_tool_call_id())
                self.prev_tool_call_arr.append({"name": name, "arguments": ""})
                self.streamed_args_for_tool.append("")
                self.current_tool_id = index
                function = DeltaFunctionCall(name=name, arguments=args)
                tool_calls.append(DeltaToolCall(index=index, id=self._ids[index],
                                                     type="function", function=function))
            else:
                function = DeltaFunctionCall(arguments=args)
                tool_calls.append(DeltaToolCall(index=index, function=function))
            self.streamed_args_for_tool[index] += args
            self.prev_tool_call_arr[index]["arguments"] = self.streamed_args_for_tool[index]
        return DeltaMessage(content=delta.content or None, tool_calls=tool_calls)


class DeepSeekV3ToolParser(_DeepSeekToolParser):
    """V3 / R1 / R1-0528 format: `function<｜tool▁sep｜>NAME` + ```json fenced args."""

    FORMAT = DEEPSEEK_V3
    # xgrammar's builtin structural tag for exactly this format (as vLLM's in-tree parser).
    structural_tag_model = "deepseek_r1"


class DeepSeekV31ToolParser(_DeepSeekToolParser):
    """V3.1 format: `NAME<｜tool▁sep｜>ARGS`, no type, no fence."""

    FORMAT = DEEPSEEK_V31
    structural_tag_model = "deepseek_v3_1"
