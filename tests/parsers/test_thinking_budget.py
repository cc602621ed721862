"""ds_plugin/parsers/thinking_budget.py and the reasoning parsers' adjust_request."""

from __future__ import annotations

import pytest

from ds_plugin.parsers.thinking_budget import BudgetError, resolve_thinking_budget


@pytest.mark.parametrize("builtin,custom,xargs,want", [
    (None, None, None, None),
    (64, None, None, 64),
    (None, {"thinking_budget": 64}, None, 64),
    (None, None, {"thinking_budget": 64}, 64),
    (64, {"thinking_budget": 64}, None, 64),  # the same budget twice is fine
    (None, {"thinking_budget": 0}, None, 0),
    (None, {"other": 1}, None, None),
])
def test_resolves(builtin, custom, xargs, want):
    assert resolve_thinking_budget(builtin, custom, xargs) == want


@pytest.mark.parametrize("custom,xargs,culprit", [
    ({"thinking_budget": -1}, None, "custom_params.thinking_budget"),
    ({"thinking_budget": 1.5}, None, "custom_params.thinking_budget"),
    ({"thinking_budget": 8.0}, None, "custom_params.thinking_budget"),
    ({"thinking_budget": "8"}, None, "custom_params.thinking_budget"),
    ({"thinking_budget": True}, None, "custom_params.thinking_budget"),
    ("thinking_budget=8", None, "custom_params"),
    (None, {"thinking_budget": -3}, "vllm_xargs.thinking_budget"),
])
def test_rejects_naming_the_field(custom, xargs, culprit):
    with pytest.raises(BudgetError) as err:
        resolve_thinking_budget(None, custom, xargs)
    assert err.value.parameter == culprit and culprit in str(err.value)


def test_rejects_conflicting_budgets():
    with pytest.raises(BudgetError, match="conflicting"):
        resolve_thinking_budget(10, {"thinking_budget": 20}, None)


def _request(**body):
    from ds_plugin._vllm.parsers import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize("parser", ["DeepSeekR1ReasoningParser", "DeepSeekV3ReasoningParser"])
def test_adjust_request_folds_sglang_shape_into_builtin_field(parser):
    pytest.importorskip("vllm")
    from ds_plugin._vllm.parsers import VLLMValidationError
    from ds_plugin.parsers import vllm_reasoning_parser as mod
    from tests.helpers.parser_corpus import load_tokenizer

    p = getattr(mod, parser)(load_tokenizer("deepseek-r1"))
    sglang = p.adjust_request(_request(custom_params={"thinking_budget": 32}))
    native = p.adjust_request(_request(thinking_token_budget=32))
    xargs = p.adjust_request(_request(vllm_xargs={"thinking_budget": 32}))
    assert sglang.thinking_token_budget == native.thinking_token_budget == 32
    assert xargs.thinking_token_budget == 32
    assert sglang.to_sampling_params(16, {}).thinking_token_budget == 32
    with pytest.raises(VLLMValidationError) as err:
        p.adjust_request(_request(custom_params={"thinking_budget": -1}))
    assert err.value.parameter == "custom_params.thinking_budget"


@pytest.mark.parametrize("custom,xargs,culprit", [
    ({"thinking_budget": 10**30}, None, "custom_params.thinking_budget"),
    (None, {"thinking_budget": 2**31}, "vllm_xargs.thinking_budget"),
])
def test_rejects_budgets_no_engine_can_hold(custom, xargs, culprit):
    with pytest.raises(BudgetError) as err:
        resolve_thinking_budget(None, custom, xargs)
    assert err.value.parameter == culprit and str(2**31 - 1) in str(err.value)
    assert resolve_thinking_budget(None, None, {"thinking_budget": 2**31 - 1}) == 2**31 - 1


@pytest.mark.parametrize("parser", ["DeepSeekR1ReasoningParser", "DeepSeekV3ReasoningParser"])
def test_adjust_request_bounds_the_builtin_field_too(parser):
    pytest.importorskip("vllm")
    from ds_plugin._vllm.parsers import VLLMValidationError
    from ds_plugin.parsers import vllm_reasoning_parser as mod
    from tests.helpers.parser_replay import serving_tokenizer

    p = getattr(mod, parser)(serving_tokenizer("deepseek-r1"))
    with pytest.raises(VLLMValidationError) as err:
        p.adjust_request(_request(thinking_token_budget=10**30))
    assert err.value.parameter == "thinking_token_budget"


@pytest.mark.parametrize("parser,kwargs,marked", [
    ("DeepSeekR1ReasoningParser", {}, True),
    ("DeepSeekV3ReasoningParser", {"thinking": True}, True),
    ("DeepSeekV3ReasoningParser", {"thinking": False}, False)])
def test_budgeted_request_says_whether_thoughts_open_with_the_output(parser, kwargs, marked):
    pytest.importorskip("vllm")
    from ds_plugin.parsers import vllm_reasoning_parser as mod
    from ds_plugin.parsers.thinking_budget import OPENS_WITH_OUTPUT
    from tests.helpers.parser_replay import serving_tokenizer

    p = getattr(mod, parser)(serving_tokenizer("deepseek-r1"), chat_template_kwargs=kwargs)
    request = p.adjust_request(_request(thinking_token_budget=4, vllm_xargs={"k": 1}))
    extra = request.to_sampling_params(16, {}).extra_args
    assert extra.get(OPENS_WITH_OUTPUT, False) is marked and extra["k"] == 1
    unbudgeted = p.adjust_request(_request()).to_sampling_params(16, {}).extra_args
    assert OPENS_WITH_OUTPUT not in (unbudgeted or {})


@pytest.mark.parametrize("raw,refused", [(True, True), (False, True), (1, False), (0, False)])
def test_a_bool_sent_as_vllm_xargs_budget_is_refused(raw, refused):
    # vLLM's request model has already turned true into 1; only the body tells them apart.
    import asyncio
    import json

    from starlette.requests import Request

    from ds_plugin.patches.serving import bool_budget_error

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "vllm_xargs": {"thinking_budget": raw}}
    payload = json.dumps(body).encode()

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    raw_request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    error = asyncio.run(bool_budget_error(_request(vllm_xargs=body["vllm_xargs"]), raw_request))
    assert (error is not None) is refused
    if refused:
        assert "vllm_xargs.thinking_budget" in error and str(raw).lower() in error
