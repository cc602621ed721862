"""One thinking budget from the request shapes clients already send (pure Python).

vLLM 0.32 caps thinking with its own request field `thinking_token_budget` (enforced by
its built-in budget processor once `--reasoning-parser` is set). SGLang users send
`custom_params: {"thinking_budget": N}` (in `extra_body`); vLLM keeps unknown request
fields, and `vllm_xargs: {"thinking_budget": N}` is the vLLM-native spelling of the
same. The reasoning parser's `adjust_request` hook, which runs before sampling
parameters are built, folds either into `thinking_token_budget`, so all three spellings
drive the same mechanism and behave the same.

A budget is an integer from 0 to MAX_BUDGET = 2**31 - 1 in every spelling. The bound is
what the engine can hold: the V2 model runner keeps budgets as int32, and a larger
integer does not survive the request's trip to the engine (an HTTP 500 with no message
before this check). Any budget above the context length already means "unlimited", so
the bound refuses only numbers no request can mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BudgetError", "MAX_BUDGET", "OPENS_WITH_OUTPUT", "resolve_thinking_budget"]

KEY = "thinking_budget"
MAX_BUDGET = 2**31 - 1
# Set by the reasoning parsers in a budgeted request's vllm_xargs (the sampling params'
# extra_args) when they read its output as thoughts from the first token unless the
# prompt closed them; ds_plugin/patches/thinking_budget.py reads it in the engine.
OPENS_WITH_OUTPUT = "ds_plugin_thoughts_open_with_output"


class BudgetError(ValueError):
    """A budget that is not a non-negative integer; `parameter` names the field."""

    def __init__(self, message: str, parameter: str, value: Any):
        super().__init__(message)
        self.parameter = parameter
        self.value = value


def _checked(value: Any, parameter: str) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; a float such as 10.0 is still not an integer count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetError(f"{parameter} must be a non-negative integer, got {value!r}",
                          parameter, value)
    if value < 0:
        raise BudgetError(f"{parameter} must be a non-negative integer, got {value}",
                          parameter, value)
    if value > MAX_BUDGET:
        raise BudgetError(f"{parameter} must be at most {MAX_BUDGET}, got {value}",
                          parameter, value)
    return value


def resolve_thinking_budget(builtin: int | None, custom_params: Any,
                            vllm_xargs: Mapping[str, Any] | None) -> int | None:
    """The budget a request asks for, or None; BudgetError on bad or conflicting input.

    `builtin` is `thinking_token_budget`, already validated by vLLM (-1 arrives as None).
    """
    found: dict[str, int] = {}
    if builtin is not None:
        found["thinking_token_budget"] = _checked(builtin, "thinking_token_budget")
    if custom_params is not None:
        if not isinstance(custom_params, Mapping):
            raise BudgetError(f"custom_params must be an object, got {custom_params!r}",
                              "custom_params", custom_params)
        value = _checked(custom_params.get(KEY), f"custom_params.{KEY}")
        if value is not None:
            found[f"custom_params.{KEY}"] = value
    if vllm_xargs:
        value = _checked(vllm_xargs.get(KEY), f"vllm_xargs.{KEY}")
        if value is not None:
            found[f"vllm_xargs.{KEY}"] = value
    if len(set(found.values())) > 1:
        raise BudgetError(f"conflicting thinking budgets: {found}", next(iter(found)), found)
    return next(iter(found.values()), None)
