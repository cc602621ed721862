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
