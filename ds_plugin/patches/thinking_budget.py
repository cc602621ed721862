"""Budget thoughts that open with the output, no `<think>` anywhere (see the ledger in
ds_plugin/patches/__init__.py).

vLLM's budget (both model runners) counts thinking tokens from the last start marker it
finds in the prompt or the output; with none it never counts. DeepSeek's reasoning
parsers read an output as thoughts from its first token unless the prompt closed them
(R1 after a tool result, a template that adds no `<think>`), and mark such a budgeted
request (`OPENS_WITH_OUTPUT` in its extra_args). For those, when the prompt holds
neither marker, the count starts at the prompt's end; a start marker the model then
writes itself restarts it there, exactly as vLLM counts a marker in the output.

V1 runner (ThinkingBudgetStateHolder, host-side state): the state is built as if the
prompt ended with the start marker, and rebuilt from the real prompt if the output
begins with the marker. V2 runner (ThinkingBudgetState, a Triton kernel over cached
marker positions): after vLLM resets a new request's cache, its last start is set just
before the output and its scan to begin there, decided on the device without a sync.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from ds_plugin.parsers.thinking_budget import OPENS_WITH_OUTPUT

_MARK = "__ds_plugin_thinking_budget_patch__"


def contains(tokens: Sequence[int], marker: Sequence[int]) -> bool:
    """Whether `marker` (a token sequence) occurs in `tokens`."""
    if not marker:
        return False
    n, first = len(marker), marker[0]
    pos = -1
    try:
        while True:
            pos = tokens.index(first, pos + 1)
            if list(tokens[pos:pos + n]) == list(marker):
                return True
    except ValueError:
        return False


class PromptOpenedAtEnd(list):
    """The prompt as vLLM's budget state sees it for thoughts that open with the output:
    the real prompt, then the start marker. `real` keeps the prompt itself."""

    def __init__(self, prompt: Sequence[int], start: Sequence[int]):
        super().__init__([*prompt, *start])
        self.real = list(prompt)


def budget_prompt(params, prompt: list[int] | None, start: list[int], end: list[int]):
    """The prompt to build the budget state of one added request from."""
    if (prompt is None or params is None or params.thinking_token_budget is None
            or not (params.extra_args or {}).get(OPENS_WITH_OUTPUT)):
        return prompt
    if contains(prompt, start) or contains(prompt, end):
        return prompt  # the prompt opened or closed the thoughts: vLLM reads that itself
    return PromptOpenedAtEnd(prompt, start)


def _sync_batch(original):
    @functools.wraps(original)
    def sync_batch(self, batch_update):
        start, end = self.think_start_token_ids, self.think_end_token_ids
        if batch_update and self.is_enabled and start and end and batch_update.added:
            added = [(index, params, budget_prompt(params, prompt, start, end), output)
                     for index, params, prompt, output in batch_update.added]
            batch_update = dataclasses.replace(batch_update, added=added)
        return original(self, batch_update)

    return sync_batch


def _update_state(original):
    @functools.wraps(original)
    def update_state(self, *args, **kwargs):
        start = self.think_start_token_ids
        for index, state in list(self._state.items()):
            prompt = state.get("prompt_tok_ids")
            output = state.get("output_tok_ids") or []
            if not isinstance(prompt, PromptOpenedAtEnd) or len(output) < len(start):
                continue
            if list(output[:len(start)]) == list(start):
                # The model opened the thoughts itself: count from its marker.
                fresh = self._init_state_entry(prompt.real, state["thinking_token_budget"])
                fresh["output_tok_ids"] = output
                self._state[index] = fresh
            else:
                state["prompt_tok_ids"] = list(prompt)  # settled: opened with the output
        return original(self, *args, **kwargs)

    return update_state


def apply(holder_cls: type) -> None:
    """Patch `holder_cls` (vLLM's V1 ThinkingBudgetStateHolder) in place. Idempotent."""
    if getattr(holder_cls, _MARK, False):
        return
    holder_cls.sync_batch = _sync_batch(holder_cls.sync_batch)
    holder_cls.update_state = _update_state(holder_cls.update_state)
    setattr(holder_cls, _MARK, True)


# -- V2 model runner ----------------------------------------------------------------------


def _contains_on_device(tokens, marker):
    """0-dim bool tensor: whether `marker` occurs in `tokens` (both 1-D, one device)."""
    import torch

    n = marker.numel()
    if tokens.numel() < n:
        return torch.zeros((), dtype=torch.bool, device=tokens.device)
    return (tokens.unfold(0, n, 1) == marker).all(dim=1).any()


def open_at_prompt_end(last_start, scan_pos, row: int, prompt, start, end) -> None:
    """Write V2's marker cache of `row` so its count starts after `prompt` when the prompt
    holds neither marker; leave vLLM's cold-scan state (-1, 0) otherwise. Device-only."""
    import torch

    opened = ~(_contains_on_device(prompt, start) | _contains_on_device(prompt, end))
    n = prompt.numel()
    last_start[row] = torch.where(opened, n - start.numel(), -1).to(last_start.dtype)
    scan_pos[row] = torch.where(opened, n, 0).to(scan_pos.dtype)


def _v2_add_request(original):
    @functools.wraps(original)
    def add_request(self, req_idx: int, sampling_params) -> bool:
        budgeted = original(self, req_idx, sampling_params)
        if budgeted and (sampling_params.extra_args or {}).get(OPENS_WITH_OUTPUT):
            self.__dict__.setdefault("_ds_plugin_open_rows", []).append(req_idx)
        return budgeted

    return add_request


def _v2_apply_staged_writes(original):
    @functools.wraps(original)
    def apply_staged_writes(self) -> None:
        original(self)  # resets the caches of new budgeted requests
        rows = self.__dict__.pop("_ds_plugin_open_rows", None)
        for row in rows or ():
            # The runner applied the request's tokens before this (model_runner.py
            # add_requests: req_states first, then the sampler).
            n = int(self.req_states.prompt_len.np[row])
            prompt = self.req_states.all_token_ids.gpu[row, :n]
            open_at_prompt_end(self.cached_last_start, self.cached_scan_pos, row, prompt,
                               self.reasoning_start_token_ids,
                               self.natural_reasoning_end_token_ids)

    return apply_staged_writes


def apply_v2(state_cls: type) -> None:
    """Patch `state_cls` (vLLM's V2 ThinkingBudgetState) in place. Idempotent."""
    if getattr(state_cls, _MARK, False):
        return
    state_cls.add_request = _v2_add_request(state_cls.add_request)
    state_cls.apply_staged_writes = _v2_apply_staged_writes(state_cls.apply_staged_writes)
    setattr(state_cls, _MARK, True)
