"""Replay a raw model output through vLLM's own serving parser, both ways.

vLLM's chat serving builds one `DelegatingParser` (reasoning + tool parser) per request;
non-streaming calls `is_reasoning_end(prompt)` then `parse(text)`, streaming calls
`parse_delta(...)` per engine output. These helpers do exactly that, without a server,
so tests and benchmarks/parsers_side_by_side.py see what an OpenAI client would get.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ds_plugin._vllm.parsers import ChatCompletionRequest
from tests.helpers.parser_corpus import Case, Chunk, load_tokenizer

TOOL_NAMES = ("get_weather", "get_time", "run", "a", "b")


@dataclass
class Outcome:
    """What the client sees. Whitespace-only content counts as none: vLLM drops it from
    non-streaming responses with calls, while streaming has already sent it."""

    reasoning: str
    content: str
    calls: list[tuple[str, str]]
    tool_calls_finish: bool  # would finish_reason be "tool_calls"
    problems: list[str] = field(default_factory=list)  # protocol violations seen

    def key(self):
        return self.reasoning, self.content, self.calls, self.tool_calls_finish


def tokenizer_for(case: Case) -> str:
    if case.fmt == "v31":
        return "deepseek-v3.1"
    return "deepseek-v3" if case.reasoning is None else "deepseek-r1"


def make_request(case: Case):
    tools = [{"type": "function", "function": {
        "name": n, "description": f"tool {n}",
        "parameters": {"type": "object", "properties": {}}}} for n in TOOL_NAMES]
    return ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools, tool_choice="auto",
        chat_template_kwargs={"thinking": case.thinking})


def prompt_ids(case: Case) -> list[int]:
    """The prompt the real chat template renders for this case."""
    return list(_prompt_ids(tokenizer_for(case), case.thinking))


@functools.lru_cache(maxsize=None)
def _prompt_ids(tokenizer: str, thinking: bool) -> tuple[int, ...]:
    tok = load_tokenizer(tokenizer)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the weather?"}],
                                   tokenize=False, add_generation_prompt=True,
                                   thinking=thinking)
    return tuple(tok(text, add_special_tokens=False)["input_ids"])


def compose(tool_cls, reasoning_cls):
    """The per-request parser class vLLM's ParserManager builds for these two."""
    from tests.helpers.vllm_probe import delegating_parser_base

    base = delegating_parser_base()
    return type("ReplayParser", (base,), {"tool_parser_cls": tool_cls,
                                          "reasoning_parser_cls": reasoning_cls})


def _new(parser_cls, case: Case, request):
    return parser_cls(load_tokenizer(tokenizer_for(case)), request.tools,
                      chat_template_kwargs={"thinking": case.thinking}, model_config=None)


def _blank(text: str | None) -> str:
    return text if text and text.strip() else ""


def run_non_streaming(parser_cls, case: Case) -> Outcome:
    request = make_request(case)
    parser = _new(parser_cls, case, request)
    parser.is_reasoning_end(prompt_ids(case))  # as serving's resolve_reasoning_ended does
    ids = load_tokenizer(tokenizer_for(case))(case.text, add_special_tokens=False)["input_ids"]
    reasoning, content, calls = parser.parse(case.text, request, enable_auto_tools=True,
                                             model_output_token_ids=ids)
    calls = calls or []
    return Outcome(reasoning or "", _blank(content), [(c.name, c.arguments) for c in calls],
                   bool(calls))


def run_streaming(parser_cls, case: Case, chunks: list[Chunk]) -> Outcome:
    request = make_request(case)
    parser = _new(parser_cls, case, request)
    prompt = prompt_ids(case)
    reasoning, content, problems = "", "", []
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    args: dict[int, str] = {}
    streamed = False
    for i, (text, token_ids) in enumerate(chunks):
        delta = parser.parse_delta(text, list(token_ids), request, prompt_token_ids=prompt,
                                   finished=i == len(chunks) - 1)
        if delta is None:
            continue
        reasoning += delta.reasoning or ""
        content += delta.content or ""
        for tc in delta.tool_calls:
            streamed = True
            fn = tc.function
            if tc.index not in names:
                if not (tc.id and fn and fn.name):
                    problems.append(f"call {tc.index} first seen without id and name")
                names[tc.index], ids[tc.index] = (fn.name if fn else None), tc.id
            elif tc.id is not None or (fn and fn.name is not None):
                problems.append(f"call {tc.index} sent its id or name twice")
            if fn and fn.arguments:
                args[tc.index] = args.get(tc.index, "") + fn.arguments
    if sorted(names) != list(range(len(names))):
        problems.append(f"call indices not 0..n-1: {sorted(names)}")
    if any(a == "{}" for a in args.values()) and "{}" not in {a for _, a in case.calls}:
        problems.append("placeholder {} arguments streamed")
    calls = [(names[i], args.get(i, "")) for i in sorted(names)]
    return Outcome(reasoning, _blank(content), calls, streamed, problems)


def expected(case: Case) -> Outcome:
    return Outcome(case.reasoning or "", _blank(case.content), list(case.calls),
                   bool(case.calls))
