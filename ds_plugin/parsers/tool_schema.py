"""A request's tool schemas are checked before the model sees them (pure Python).

A tool's `parameters` is a JSON Schema: the chat template writes it into the prompt and
vLLM's structured outputs compile it into a grammar. vLLM accepts any mapping there, so
`{"type": 123}` reaches the model (or the grammar compiler) unnoticed. Checked against
the JSON Schema metaschema it names (`$schema`; draft 2020-12 when absent) with
`jsonschema`, which vLLM itself depends on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ToolSchemaError", "check_tool_schemas"]


class ToolSchemaError(ValueError):
    """A tool whose parameters are not a JSON Schema; `parameter` names the field."""

    def __init__(self, message: str, parameter: str, value: Any):
        super().__init__(message)
        self.parameter = parameter
        self.value = value


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def check_tool_schemas(tools: Iterable[Any] | None) -> None:
    """Raise ToolSchemaError for the first tool whose `parameters` is not a JSON Schema.

    Takes Chat Completions tools (`{"type": "function", "function": {...}}`) and
    Responses ones (the function's fields at the top level), as objects or mappings.
    """
    from jsonschema import Draft202012Validator, SchemaError, validators

    for i, tool in enumerate(tools or ()):
        function = _get(tool, "function")
        where = f"tools[{i}].function" if function is not None else f"tools[{i}]"
        function = tool if function is None else function
        params = _get(function, "parameters")
        if params is None:
            continue
        name = _get(function, "name")
        field = f"{where}.parameters"
        if not isinstance(params, dict):
            raise ToolSchemaError(f"tool {name!r}: {field} must be a JSON Schema object, got "
                                  f"{params!r}", field, params)
        try:
            validators.validator_for(params, default=Draft202012Validator).check_schema(params)
        except SchemaError as e:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
            raise ToolSchemaError(f"tool {name!r}: {field}{path} is not valid JSON Schema: "
                                  f"{e.message}", field + path, e.instance) from None
