"""Two corrections to vLLM's chat-completion serving (see the ledger in
ds_plugin/patches/__init__.py): finish_reason of a cut-off tool call, and a bool sent as
`vllm_xargs.thinking_budget`."""

from __future__ import annotations

import functools
from typing import Any

from ds_plugin.parsers.thinking_budget import KEY

_MARK = "__ds_plugin_serving_patch__"


def _finish_reason_of_length(original):
    """Non-streaming: a choice whose engine output stopped at max_tokens says "length"
    even when the parser found a (cut-off) call, as the stream already does."""

    @functools.wraps(original)
    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        last: list[Any] = []

        async def watched():
            async for res in result_generator:
                last[:] = [res]
                yield res

        response = await original(self, request, watched(), *args, **kwargs)
        engine = {out.index: out.finish_reason for out in (last[0].outputs if last else ())}
        for choice in getattr(response, "choices", None) or ():
            if choice.finish_reason == "tool_calls" and engine.get(choice.index) == "length":
                choice.finish_reason = "length"
        return response

    return chat_completion_full_generator


async def bool_budget_error(request, raw_request) -> str | None:
    """The error for a JSON bool sent as `vllm_xargs.thinking_budget`, or None.

    vLLM's request model types vllm_xargs values as str | int | float | list, and its
    validation turns true/false into 1/0; only the raw body still says which it was.
    """
    xargs = getattr(request, "vllm_xargs", None) or {}
    value = xargs.get(KEY)
    if value not in (0, 1) or raw_request is None:
        return None
    try:
        body = await raw_request.json()
    except Exception:  # noqa: BLE001 - no readable body (not an HTTP request): nothing to add
        return None
    raw = (body.get("vllm_xargs") or {}).get(KEY) if isinstance(body, dict) else None
    if isinstance(raw, bool):
        return f"vllm_xargs.{KEY} must be a non-negative integer, got {str(raw).lower()}"
    return None


def _refuse_bool_budget(original):
    @functools.wraps(original)
    async def create_chat_completion(self, request, raw_request=None):
        error = await bool_budget_error(request, raw_request)
        if error is not None:
            return self.create_error_response(error, param=f"vllm_xargs.{KEY}")
        return await original(self, request, raw_request)

    return create_chat_completion


def apply(serving_cls: type) -> None:
    """Patch `serving_cls` (vLLM's OpenAIServingChat) in place. Idempotent."""
    if getattr(serving_cls, _MARK, False):
        return
    serving_cls.chat_completion_full_generator = _finish_reason_of_length(
        serving_cls.chat_completion_full_generator)
    serving_cls.create_chat_completion = _refuse_bool_budget(serving_cls.create_chat_completion)
    setattr(serving_cls, _MARK, True)
