"""ds-plugin's MLA attention backend for vLLM: one backend, its decode served by an adapter.

vLLM's `MLAAttention` layer does the MLA bookkeeping (absorbing W_UK into the decode query,
W_UV after it, the prefill/decode split); a backend supplies a metadata builder, a KV-cache
write and `forward_mqa`, the absorbed decode. Prefill (attention on decompressed K/V, with the
chunked prefix merged by LSE) stays with vLLM's selected MLA prefill backend via
`MLACommonImpl.forward_mha`: FlashAttention-class kernels on CUDA, SDPA on CPU.

The decode kernel is an adapter of ds_plugin/attention/mla_family.py (Triton, torch, FlashInfer
fa3/fa2/trtllm-gen/cutlass, FlashMLA), chosen once when the layer is built from the platform's
measured default or DS_PLUGIN_MLA_KERNEL; one log line says which serves and why. The builder
runs the adapter's host-side plan once per batch (for FlashInfer, its scheduler), and every
layer's decode uses it.

Selecting it (see ds_plugin/__init__.py, ATTENTION_BACKENDS):
- CUDA: `--attention-backend CUSTOM`. vLLM's in-tree MLA backends and its auto-selection stay
  as they are; the CUSTOM placeholder survives spawned workers, a new enum name would not.
- CPU: `DS_PLUGIN_CPU_MLA=1` plus `--attention-backend CPU_MLA` (on AMX machines vLLM otherwise
  picks AMX_MLA): the torch adapter, or Triton through the interpreter with
  DS_PLUGIN_TRITON_ON_CPU=1 (tests), so the family's glue runs inside the real engine in CI.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from ds_plugin._vllm.attention import (AttentionCGSupport, AttentionLayerBase, AttentionType,
                                        MLACommonBackend, MLACommonDecodeMetadata, MLACommonImpl,
                                        MLACommonMetadata, MLACommonMetadataBuilder, MultipleOf,
                                        QueryLenSupport, VllmConfig, get_current_vllm_config,
                                        get_layers_from_vllm_config)
from ds_plugin.attention.mla_family import KV_DTYPES, DecodeSpec, MLAKernelUnavailable, choose

log = logging.getLogger("vllm.ds_plugin")

_CACHE_DTYPES = {"bfloat16": "bf16", "fp8": "fp8", "fp8_e4m3": "fp8"}


@functools.cache
def _announce(name: str, reason: str) -> None:
    # Once per process and choice: which adapter serves decode, and why (the logs' proof too).
    log.info("ds-plugin MLA backend (ds_plugin.attention.mla_backend): decode via %s: %s",
             name, reason)


@functools.cache
def _announce_multi_token(s_q: int) -> None:
    # Once per query length: MTP verification reached the decode kernel, not the prefill path.
    log.info("ds-plugin MLA decode: %d query tokens per request (causal among them)", s_q)


def decode_spec(config: VllmConfig, *, num_heads: int, scale: float, kv_cache_dtype: str,
                kv_lora_rank: int = 512, rope_dim: int = 64) -> DecodeSpec:
    """The family's build-time facts from vLLM's config (page size, dtypes, MTP depth)."""
    model = config.model_config
    if kv_cache_dtype == "auto":
        kv = KV_DTYPES.get(model.dtype)
    else:
        kv = _CACHE_DTYPES.get(kv_cache_dtype)
    if kv is None:
        raise MLAKernelUnavailable(f"ds-plugin MLA backend: kv_cache_dtype {kv_cache_dtype!r} "
                                   f"(model dtype {model.dtype}) is not served; use auto, "
                                   "bfloat16, fp8 or fp8_e4m3")
    spec_cfg = config.speculative_config
    drafts = (spec_cfg.num_speculative_tokens or 0) if spec_cfg is not None else 0
    return DecodeSpec(num_heads=num_heads, scale=scale, page_size=config.cache_config.block_size,
                      kv_dtype=kv, device=torch.device(config.device_config.device),
                      q_dtype=model.dtype, kv_lora_rank=kv_lora_rank, rope_dim=rope_dim,
                      max_query_len=1 + drafts, max_seq_len=model.max_model_len)


@dataclass
class DSMLADecodeMetadata(MLACommonDecodeMetadata):
    plan: object = None


@dataclass
class DSMLAMetadata(MLACommonMetadata[DSMLADecodeMetadata]):
    pass


class DSMLAMetadataBuilder(MLACommonMetadataBuilder[DSMLAMetadata]):
    # Decode batches of one query length per request (MTP verification included) take the
    # decode path; full CUDA graphs where the chosen adapter's decode is capturable.
    _cudagraph_support: ClassVar = AttentionCGSupport.UNIFORM_BATCH
    query_len_support: ClassVar = QueryLenSupport.UNIFORM

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, DSMLAMetadata)
        # Plan with the first layer's adapter: one plan per batch serves every layer.
        layers = get_layers_from_vllm_config(vllm_config, AttentionLayerBase, layer_names)
        impl = next(layer.impl for layer in layers.values())
        self._decoder = impl.decoder

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        # The choice does not depend on the softmax scale; the layers' own specs carry theirs.
        heads = vllm_config.model_config.get_num_attention_heads(vllm_config.parallel_config)
        spec = decode_spec(vllm_config, num_heads=heads, scale=1.0,
                           kv_cache_dtype=vllm_config.cache_config.cache_dtype)
        if choose(spec).cls.caps.cuda_graphs:
            return AttentionCGSupport.UNIFORM_BATCH
        return AttentionCGSupport.NEVER

    def _build_decode(self, block_table_tensor, seq_lens_device, max_seq_len,
                      query_start_loc_cpu, query_start_loc_device, num_decode_tokens,
                      max_query_len, dcp_tot_seq_lens_device) -> DSMLADecodeMetadata:
        num_reqs = seq_lens_device.shape[0]
        s_q = num_decode_tokens // num_reqs if num_reqs else 1
        plan = self._decoder.plan(block_table_tensor, seq_lens_device, s_q, longest=max_seq_len)
        return DSMLADecodeMetadata(block_table=block_table_tensor, seq_lens=seq_lens_device,
                                   dcp_tot_seq_lens=dcp_tot_seq_lens_device, plan=plan)


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
        # The least any adapter needs (Triton from SM80); the chosen one checks its own.
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


class DSMLAImpl(MLACommonImpl[DSMLAMetadata]):
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
        # Adapters take a bf16 query against an fp8 cache, so the layer must not quantize it.
        self.supports_quant_query_input = False
        spec = decode_spec(get_current_vllm_config(), num_heads=num_heads, scale=self.scale,
                           kv_cache_dtype=kv_cache_dtype, kv_lora_rank=self.kv_lora_rank,
                           rope_dim=self.qk_rope_head_dim)
        choice = choose(spec)
        self.decoder = choice.cls(spec)
        self.can_return_lse_for_decode = choice.cls.caps.returns_lse
        self._fp8 = spec.kv_dtype == "fp8"
        _announce(choice.name, choice.reason)

    def do_kv_cache_update(self, kv_c_normed: torch.Tensor, k_pe: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                           kv_cache_dtype: str, k_scale: torch.Tensor,
                           skip_scale: bool = False) -> None:
        # vLLM 0.33 passes `skip_scale` (True only when k_scale is 1.0): the bytes written are
        # the same either way, so it is accepted and ignored.
        if kv_cache.numel() == 0:
            return
        slots = slot_mapping.flatten()
        # Inputs may carry CUDA-graph padding rows beyond the slot mapping.
        n = slots.numel()
        self.decoder.write(kv_c_normed[:n], k_pe[:n], kv_cache, slots,
                           k_scale if self._fp8 else None)

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
        out, lse = self.decoder.decode(q4, kv_c_and_k_pe_cache, decode.block_table,
                                       decode.seq_lens, plan=decode.plan,
                                       k_scale=layer._k_scale if self._fp8 else None)
        rank = self.kv_lora_rank
        return out.view(tokens, heads, rank), None if lse is None else lse.view(tokens, heads)
