"""One thinking budget from the request shapes clients already send (pure Python).

vLLM 0.32 caps thinking with its own request field `thinking_token_budget` (enforced by
its built-in budget processor once `--reasoning-parser` is set). SGLang users send
`custom_params: {"thinking_budget": N}` (in `extra_body`); vLLM keeps unknown request
fields, and `vllm_xargs: {"thinking_budget": N}` is the vLLM-native spelling of the
same. The reasoning parser's `adjust_request` hook, which runs before sampling
parameters are built, folds either into `thinking_token_budget`, so all three spellings
drive the same mechanism and behave the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BudgetError", "resolve_thinking_budget"]

KEY = "thinking_budget"


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
    return value


def resolve_thinking_budget(builtin: int | None, custom_params: Any,
                            vllm_xargs: Mapping[str, Any] | None) -> int | None:
    """The budget a request asks for, or None; BudgetError on bad or conflicting input.

    `builtin` is `thinking_token_budget`, already validated by vLLM (-1 arrives as None).
    """
    found: dict[str, int] = {}
    if builtin is not None:
        found["thinking_token_budget"] = builtin
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
