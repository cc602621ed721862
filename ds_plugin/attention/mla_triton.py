"""The Triton adapter: ds-plugin's own paged MLA decode (ds_plugin/kernels/mla_decode.py).

Every CUDA GPU from SM80 (FP8 KV from SM89, where Triton converts e4m3 in hardware), any page
size, any number of query tokens per request, any latent shape of powers of two. On a CPU it
runs only through the Triton interpreter (DS_PLUGIN_TRITON_ON_CPU=1 with TRITON_INTERPRET=1):
the launch glue is the GPU's (strides, block table, split count, workspace), so tests drive
the GPU path inside the engine.

CUDA-graph safe: the split count depends on host-side numbers only. The plan is the batch's
longest sequence when the host knows it; a captured graph replays for any length up to
max_seq_len, so under capture (or without a plan) the split count is sized for that.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ds_plugin import envs
from ds_plugin.attention.mla_family import Capabilities, DecodeSpec, MLADecodeAdapter
from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits

# The interpreter runs one fixed tile shape (autotuning would run every config in Python).
_INTERPRETER_CONFIG = {"BLOCK_H": 16, "BLOCK_N": 16}
# The interpreter has no SMs; sizing splits as for an H200's 132 keeps its glue the GPU's.
_INTERPRETER_SMS = 132


class TritonDecode(MLADecodeAdapter):
    name = "triton"
    caps: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cuda", "cpu"}), library="triton",
        pin="ds_plugin.kernels.mla_decode (Triton >= 3.6)",
        kv_dtypes=frozenset({"bf16", "fp16", "fp8"}),
        q_dtypes=frozenset({torch.bfloat16, torch.float16}),
        pages="any", page_ok=lambda page: page >= 1, max_query_len=None,
        compute=lambda cc: cc >= (8, 0), compute_text="SM80 or newer",
        fp8_compute=lambda cc: cc >= (8, 9), rank_rope=None)

    @classmethod
    def library_refusal(cls, spec: DecodeSpec) -> str | None:
        if spec.device.type == "cpu" and not envs.triton_on_cpu():
            return ("runs on a CPU only through the Triton interpreter "
                    "(DS_PLUGIN_TRITON_ON_CPU=1 with TRITON_INTERPRET=1)")
        return None

    def __init__(self, spec: DecodeSpec, config: dict | None = None) -> None:
        """`config` pins one tile shape instead of autotuning (the interpreter always does;
        GPU tests do it to bound compile time)."""
        super().__init__(spec)
        interpreted = spec.device.type == "cpu"
        self._config = config or (_INTERPRETER_CONFIG if interpreted else None)
        self._num_sms = (_INTERPRETER_SMS if interpreted
                         else torch.cuda.get_device_properties(spec.device).multi_processor_count)

    def splits(self, batch: int, s_q: int, longest: int) -> int:
        return mla_decode_num_splits(batch, s_q * self.spec.num_heads, longest, self._num_sms)

    def plan(self, block_table, seq_lens, s_q, *, longest=None):
        return longest

    def decode(self, q, cache, block_table, seq_lens, *, plan=None, k_scale=None):
        batch, s_q = q.shape[:2]
        capturing = self.spec.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        longest = self.spec.max_seq_len if plan is None or capturing else int(plan)
        return mla_decode(q, cache, block_table, seq_lens, self.spec.scale,
                          self.spec.kv_lora_rank, k_scale=k_scale,
                          num_splits=self.splits(batch, s_q, longest), config=self._config)
