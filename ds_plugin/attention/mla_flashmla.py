"""The FlashMLA adapter: DeepSeek's dense MLA decode (`flash_mla.flash_mla_with_kvcache`).

Pinned to deepseek-ai/FlashMLA commit 9241ae3 (2026-04-29), the newest we could read and one
whose support matrix still has dense decode on SM90 with a BF16 cache. FlashMLA's 2026-09-30
release dropped Hopper and changed the KV format: install FlashMLA from 9241ae3 (or any
commit since c2067be, 2025-04-22, with the lazily built `FlashMLASchedMeta`) for H100/H200.

Limits at that commit: SM90 only, BF16 query and cache (its FP8 cache is the sparse V3.2
format, 656 bytes a token, not this family's per-tensor e4m3 rows, so FP8 is refused), pages
of 64 tokens. The cache is read as [blocks, 64, 1, 576]; a row that sees no key comes back
with lse +inf, which the family reports as -inf. The scheduler metadata is built on the first
call of a batch and reused by the batch's other layers (the plan), on the device, so the
decode is capturable in CUDA graphs.
"""

from __future__ import annotations

import importlib
from typing import ClassVar

import torch

from ds_plugin.attention.mla_family import (Capabilities, DecodeSpec, MLADecodeAdapter,
                                            lse_or_empty)

PIN = "flash_mla @ deepseek-ai/FlashMLA 9241ae3 (2026-04-29); not the 2026-09-30 release"


class FlashMLADecode(MLADecodeAdapter):
    name = "flashmla"
    module: ClassVar[str] = "flash_mla"
    caps: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cuda"}), library="flash_mla", pin=PIN,
        kv_dtypes=frozenset({"bf16"}), q_dtypes=frozenset({torch.bfloat16}),
        pages="64", page_ok=lambda page: page == 64, max_query_len=None,
        compute=lambda cc: cc[0] == 9, compute_text="SM90 (Hopper)")

    def __init__(self, spec: DecodeSpec) -> None:
        super().__init__(spec)
        self._lib = importlib.import_module(self.module)

    @classmethod
    def library_refusal(cls, spec: DecodeSpec) -> str | None:
        lib = importlib.import_module(cls.module)
        if not hasattr(lib, "get_mla_metadata") or not hasattr(lib, "flash_mla_with_kvcache"):
            return f"{cls.module} lacks get_mla_metadata / flash_mla_with_kvcache ({PIN})"
        return None

    def plan(self, block_table, seq_lens, s_q, *, longest=None):
        # A fresh scheduler record per batch: FlashMLA fills it on the batch's first call.
        return self._lib.get_mla_metadata()[0]

    def decode(self, q, cache, block_table, seq_lens, *, plan=None, k_scale=None):
        sched = self.plan(block_table, seq_lens, q.shape[1]) if plan is None else plan
        out, lse = self._lib.flash_mla_with_kvcache(
            q, cache.unsqueeze(-2), block_table, seq_lens, self.spec.kv_lora_rank, sched,
            None, softmax_scale=self.spec.scale, causal=True)
        # FlashMLA's lse is [B, H, s_q].
        return out, lse_or_empty(lse.transpose(1, 2))
