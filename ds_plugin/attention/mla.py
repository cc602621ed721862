"""ds-plugin's MLA attention backend for vLLM: our latent-cache write and paged decode kernels.

vLLM's `MLAAttention` layer does the MLA bookkeeping (absorbing W_UK into the decode query,
W_UV after it, the prefill/decode split); a backend supplies a metadata builder, a KV-cache
write and `forward_mqa`, the absorbed decode. Prefill (attention on decompressed K/V, with the
chunked prefix merged by LSE) stays with vLLM's selected MLA prefill backend via
`MLACommonImpl.forward_mha`: FlashAttention-class kernels on CUDA, SDPA on CPU.

Selecting it (see ds_plugin/__init__.py, ATTENTION_BACKENDS):
- CUDA: `--attention-backend CUSTOM`. vLLM's in-tree TRITON_MLA and the auto-selection stay as
  they are; the CUSTOM placeholder survives spawned workers, a new enum name would not.
- CPU: `DS_PLUGIN_CPU_MLA=1` plus `--attention-backend CPU_MLA` (on AMX machines vLLM otherwise
  picks AMX_MLA). The same impl then runs the fp32 torch twins of the kernels in place of the
  Triton launches, so the metadata, cache layout and impl run inside the real engine in CI.

Decode is CUDA-graph safe: no host sync (the split count comes from host-side shapes, each
split's range from the device-side sequence lengths), and the per-call output and workspace
allocations come from the graph's private memory pool when captured, as vLLM's own are.
"""

from __future__ import annotations

import functools
import logging
from typing import ClassVar

import torch

from ds_plugin._vllm.attention import (AttentionCGSupport, AttentionType, MLACommonBackend,
                                        MLACommonImpl, MLACommonMetadata,
                                        MLACommonMetadataBuilder, MultipleOf, QueryLenSupport,
                                        current_max_model_len)
from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits
from ds_plugin.kernels.mla_kv_cache import mla_kv_cache_write
from ds_plugin.kernels.ref_mla import ref_mla_decode, ref_mla_kv_cache_write

log = logging.getLogger("vllm.ds_plugin")


@functools.cache
def _announce(path: str) -> None:
    # Once per process: says which path serves decode (and proves in logs that ours does).
    log.info("ds-plugin MLA backend (ds_plugin.attention.mla): decode via %s", path)


@functools.cache
def _announce_multi_token(s_q: int) -> None:
    # Once per query length: MTP verification reached the decode kernel, not the prefill path.
    log.info("ds-plugin MLA decode: %d query tokens per request (causal among them)", s_q)


class DSMLAMetadataBuilder(MLACommonMetadataBuilder[MLACommonMetadata]):
    # Decode batches of one query length per request (MTP verification included) take the
    # decode path and may be captured as full CUDA graphs.
    _cudagraph_support: ClassVar = AttentionCGSupport.UNIFORM_BATCH
    query_len_support: ClassVar = QueryLenSupport.UNIFORM


class DSMLABackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "bfloat16", "fp8", "fp8_e4m3"]

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[DSMLAImpl]:
        return DSMLAImpl

    @staticmethod
    def get_builder_cls() -> type[DSMLAMetadataBuilder]:
        return DSMLAMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [576]

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        return [MultipleOf(16)]

    @classmethod
    def supports_block_size(cls, block_size: int | None) -> bool:
        return block_size is None or block_size % 16 == 0

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        # fp8 e4m3 conversion in Triton needs SM89+; bf16 caches run from SM80.
        return capability is not None and capability.major >= 8


class DSCpuMLABackend(DSMLABackend):
    """The same backend under vLLM's CPU_MLA name, with the CPU platform's constraints."""

    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.bfloat16, torch.float16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto"]

    @staticmethod
    def get_name() -> str:
        return "CPU_MLA"

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list:
        return [16]

    @classmethod
    def supports_block_size(cls, block_size: int | None) -> bool:
        return block_size is None or block_size == 16


class DSMLAImpl(MLACommonImpl[MLACommonMetadata]):
    can_return_lse_for_decode: bool = True

    def __init__(self, num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                 kv_cache_dtype, logits_soft_cap, attn_type, kv_sharing_target_layer_name,
                 **mla_args) -> None:
        super().__init__(num_heads, head_size, scale, num_kv_heads, alibi_slopes, sliding_window,
                         kv_cache_dtype, logits_soft_cap, attn_type,
                         kv_sharing_target_layer_name, **mla_args)
        if alibi_slopes is not None or sliding_window is not None or logits_soft_cap:
            raise NotImplementedError("ds-plugin MLA: alibi_slopes, sliding_window and "
                                      "logits_soft_cap are not supported")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"ds-plugin MLA: attn_type {attn_type!r} is not supported "
                                      "(decoder self-attention only)")
        if self.dcp_world_size > 1:
            raise NotImplementedError("ds-plugin MLA: decode context parallelism is not supported")
        if kv_cache_dtype not in DSMLABackend.supported_kv_cache_dtypes:
            raise ValueError(f"ds-plugin MLA: kv_cache_dtype {kv_cache_dtype!r} is not one of "
                             f"{DSMLABackend.supported_kv_cache_dtypes}")
        # The decode kernel takes a bf16 query against an fp8 cache (upcast in registers), so
        # the layer must not quantize the query.
        self.supports_quant_query_input = False
        self._fp8 = kv_cache_dtype.startswith("fp8")
        self._num_sms = (torch.cuda.get_device_properties().multi_processor_count
                         if torch.cuda.is_available() else 1)
        _announce("Triton kernels" if torch.cuda.is_available() else "fp32 torch twins (CPU)")
        # Read at layer build, while a vLLM config is current; a long context if none is.
        self._max_model_len = current_max_model_len(default=163840)

    def do_kv_cache_update(self, kv_c_normed: torch.Tensor, k_pe: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                           kv_cache_dtype: str, k_scale: torch.Tensor,
                           skip_scale: bool = False) -> None:
        # vLLM 0.33 passes skip_scale (7th, positionally) when an fp8 cache has k_scale 1.0,
        # to skip a multiply by one; scaling by 1.0 writes the same bytes, so it is ignored.
        if kv_cache.numel() == 0:
            return
        slots = slot_mapping.flatten()
        # Inputs may carry CUDA-graph padding rows beyond the slot mapping.
        kv_c, pe = kv_c_normed[:slots.numel()], k_pe[:slots.numel()]
        if kv_cache.is_cuda:
            mla_kv_cache_write(kv_c, pe, kv_cache, slots, k_scale if self._fp8 else None)
        else:
            ref_mla_kv_cache_write(kv_c, pe, kv_cache, slots, k_scale if self._fp8 else None)

    def forward_mqa(self, q, kv_c_and_k_pe_cache: torch.Tensor, attn_metadata, layer):
        decode = attn_metadata.decode
        if isinstance(q, tuple):
            q = torch.cat(q, dim=-1)
        tokens, heads, dim = q.shape
        num_reqs = decode.seq_lens.shape[0]
        s_q, rest = divmod(tokens, num_reqs) if num_reqs else (1, 0)
        if rest:
            raise ValueError(f"ds-plugin MLA: {tokens} decode tokens over {num_reqs} requests "
                             "are not a uniform batch")
        if s_q > 1:
            _announce_multi_token(s_q)
        q4 = q.contiguous().view(num_reqs, s_q, heads, dim)
        k_scale = layer._k_scale if self._fp8 else None
        if q.is_cuda:
            # Under capture the graph replays for any length up to max_model_len: size the split
            # count for that rather than for the capture-time batch.
            longest = (self._max_model_len if torch.cuda.is_current_stream_capturing()
                       else attn_metadata.max_seq_len)
            splits = mla_decode_num_splits(num_reqs, s_q * heads, longest, self._num_sms)
            out, lse = mla_decode(q4, kv_c_and_k_pe_cache, decode.block_table, decode.seq_lens,
                                  self.scale, self.kv_lora_rank, k_scale=k_scale, num_splits=splits)
        else:
            out, lse = ref_mla_decode(q4, kv_c_and_k_pe_cache, decode.block_table,
                                      decode.seq_lens, self.scale, self.kv_lora_rank, k_scale)
            out = out.to(q.dtype)
        return out.view(tokens, heads, self.kv_lora_rank), lse.view(tokens, heads)

