"""ds_plugin/templates/*.jinja via ds_plugin/parsers/templates.py, rendered with the real
DeepSeek tokenizers (transformers' chat-template engine, as vLLM uses)."""

from __future__ import annotations

import json

import pytest

from ds_plugin.parsers.reasoning import split_reasoning
from ds_plugin.parsers.templates import TEMPLATES, template_path
from ds_plugin.parsers.tool_calls import DEEPSEEK_V3, DEEPSEEK_V31, parse_tool_calls
from tests.helpers.parser_corpus import load_tokenizer

ARGS = {"city": "北京", "when": {"days": [1, 2]}, "note": 'say "hi"\nbye'}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "Now.",
                                      "parameters": {"type": "object", "properties": {}}}}]
# (template, tokenizer, tool format)
SETUPS = {"deepseekv3": ("deepseek-v3", DEEPSEEK_V3), "deepseekr1": ("deepseek-r1", DEEPSEEK_V3),
          "deepseekv31": ("deepseek-v3.1", DEEPSEEK_V31)}
SPECIAL = ["<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>",
           "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁output▁begin｜>",
           "<｜tool▁output▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]


def conversation(arguments):
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Beijing, and the time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": arguments}},
            {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
        {"role": "assistant", "content": "Sunny, noon."},
        {"role": "user", "content": "Thanks!"},
    ]


def render(name, messages, **kwargs):
    tok = load_tokenizer(SETUPS[name][0])
    return tok, tok.apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                        chat_template=template_path(name).read_text(),
                                        add_generation_prompt=True, **kwargs)


def test_paths_exist_and_bad_name_is_named():
    assert all(template_path(n).is_file() for n in TEMPLATES)
    with pytest.raises(ValueError, match="deepseekv4"):
        template_path("deepseekv4")


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("as_string", [False, True])
def test_tool_turn_round_trips_through_our_parser(name, as_string):
    # vLLM hands templates a mapping; other callers pass the JSON string.
    args = json.dumps(ARGS, ensure_ascii=False) if as_string else ARGS
    tok, text = render(name, conversation(args))
    turn = text.split("<｜Assistant｜>")[1].split("<｜end▁of▁sentence｜>")[0]
    if name == "deepseekv31":
        assert turn.startswith("</think>")  # the template closes the thoughts first
        turn = turn[len("</think>"):]
    result = parse_tool_calls(turn, SETUPS[name][1])
    assert result.content == "Checking."
    assert [(c.name, json.loads(c.arguments)) for c in result.calls] == [
        ("get_weather", ARGS), ("get_time", {})]
    assert "北京" in text  # not \\u-escaped
    # Every marker is one token of the real vocabulary, and survives tokenization.
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for marker in SPECIAL:
        (marker_id,) = tok(marker, add_special_tokens=False)["input_ids"]
        assert text.count(marker) == ids.count(marker_id), marker
    dialog = text[text.index("<｜User｜>"):]  # the system prompt shows the format too
    assert dialog.count("<｜tool▁calls▁begin｜>") == dialog.count("<｜tool▁calls▁end｜>") == 1
    assert text.startswith(tok.bos_token + "Be brief.\n\n## Tools")
    assert '"name"' not in text and "### get_weather" in text and "### get_time" in text


@pytest.mark.parametrize("name,kwargs,tail", [
    ("deepseekv3", {}, "<｜User｜>Thanks!<｜Assistant｜>"),
    ("deepseekr1", {}, "<｜User｜>Thanks!<｜Assistant｜><think>\n"),
    ("deepseekv31", {"thinking": True}, "<｜User｜>Thanks!<｜Assistant｜><think>"),
    ("deepseekv31", {"enable_thinking": True}, "<｜User｜>Thanks!<｜Assistant｜><think>"),
    ("deepseekv31", {"thinking": False}, "<｜User｜>Thanks!<｜Assistant｜></think>"),
    ("deepseekv31", {}, "<｜User｜>Thanks!<｜Assistant｜></think>"),
])
def test_generation_prompt(name, kwargs, tail):
    assert render(name, conversation(ARGS), **kwargs)[1].endswith(tail)


@pytest.mark.parametrize("name", TEMPLATES)
def test_after_tool_results_the_model_continues_the_outputs(name):
    messages = conversation(ARGS)[:5]
    text = render(name, messages)[1]
    end = "<｜tool▁output▁end｜>" if name == "deepseekv31" else "<｜tool▁outputs▁end｜>"
    assert text.endswith(end)


def test_r1_drops_earlier_thoughts():
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": "<think>secret</think>answer"},
                {"role": "user", "content": "q2"}]
    text = render("deepseekr1", messages)[1]
    assert "secret" not in text and "<｜Assistant｜>answer<｜end▁of▁sentence｜>" in text
    assert split_reasoning("secret</think>answer") == ("secret", "answer")
