"""Multi-head Latent Attention (DeepSeek-V2 paper §2.1, used unchanged by V3) on vLLM layers.

Per token t, with h heads split over tensor-parallel ranks:

    c_q   = RMSNorm(W_DQ h_t)                          (q LoRA; absent when q_lora_rank is None)
    q     = W_UQ c_q  (or W_Q h_t)      -> [h, nope + rope]
    c_kv, k_rope = split(W_DKV h_t)     -> [kv_lora_rank], [rope]   (one head, shared)
    q_rope, k_rope = RoPE(q_rope), RoPE(k_rope)          (decoupled RoPE, interleaved pairs)

The KV cache stores only `RMSNorm(c_kv) ‖ k_rope` (576 values per token for V3). vLLM's
`MLAAttention` owns the rest: it expands keys/values through `kv_b_proj` (W_UK ‖ W_UV) for
prefill, and for decode it absorbs W_UK into the query and W_UV into the output in its
`process_weights_after_loading`, so the model passes `kv_b_proj` and never multiplies by it
itself. Whatever MLA backend the platform selects (CPU_MLA here, FlashMLA on Hopper, or a
ds_plugin backend) runs behind that layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ds_plugin._vllm.layers import (ColumnParallelLinear, MergedColumnParallelLinear,
                                     MLAAttention, ReplicatedLinear, RMSNorm, RowParallelLinear,
                                     get_rope, get_tensor_model_parallel_world_size)
from ds_plugin.model.config import DSConfig


class DeepseekV3MLA(nn.Module):
    def __init__(self, cfg: DSConfig, cache_config, quant_config, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        if cfg.num_heads % tp:
            raise ValueError(f"{prefix}: num_attention_heads={cfg.num_heads} is not divisible "
                             f"by tensor_parallel_size={tp}")
        self.cfg = cfg
        self.num_local_heads = cfg.num_heads // tp
        q_out = cfg.num_heads * cfg.qk_head_dim
        kv_a_out = cfg.kv_lora_rank + cfg.qk_rope_head_dim

        # The down projections read the full hidden state and are small: every rank keeps
        # a replica. With q LoRA both share one GEMM (checkpoint: q_a_proj, kv_a_proj_with_mqa).
        if cfg.q_lora_rank is not None:
            self.fused_qkv_a_proj = MergedColumnParallelLinear(
                cfg.hidden_size, [cfg.q_lora_rank, kv_a_out], bias=False, disable_tp=True,
                quant_config=quant_config, prefix=f"{prefix}.fused_qkv_a_proj")
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, eps=cfg.rms_norm_eps)
            self.q_b_proj = ColumnParallelLinear(
                cfg.q_lora_rank, q_out, bias=False, quant_config=quant_config,
                prefix=f"{prefix}.q_b_proj")
        else:
            self.kv_a_proj_with_mqa = ReplicatedLinear(
                cfg.hidden_size, kv_a_out, bias=False, quant_config=quant_config,
                prefix=f"{prefix}.kv_a_proj_with_mqa")
            self.q_proj = ColumnParallelLinear(
                cfg.hidden_size, q_out, bias=False, quant_config=quant_config,
                prefix=f"{prefix}.q_proj")
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, eps=cfg.rms_norm_eps)
        # Up projection of the latent, [heads·(nope + v), kv_lora_rank]; heads split over TP.
        self.kv_b_proj = ColumnParallelLinear(
            cfg.kv_lora_rank, cfg.num_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            bias=False, quant_config=quant_config, prefix=f"{prefix}.kv_b_proj")
        self.o_proj = RowParallelLinear(
            cfg.num_heads * cfg.v_head_dim, cfg.hidden_size, bias=False,
            quant_config=quant_config, prefix=f"{prefix}.o_proj")
        # DeepSeek rotates adjacent pairs (not NeoX halves) of the 64 rope dims only.
        self.rotary_emb = get_rope(cfg.qk_rope_head_dim, max_position=cfg.max_position_embeddings,
                                     rope_parameters=cfg.rope_parameters(), is_neox_style=False)
        self.attn = MLAAttention(
            num_heads=self.num_local_heads, scale=cfg.softmax_scale,
            qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim, q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank, kv_b_proj=self.kv_b_proj,
            cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn")

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.q_lora_rank is not None:
            q_c, kv_a = self.fused_qkv_a_proj(hidden)[0].split(
                [cfg.q_lora_rank, cfg.kv_lora_rank + cfg.qk_rope_head_dim], dim=-1)
            q = self.q_b_proj(self.q_a_layernorm(q_c))[0]
        else:
            kv_a = self.kv_a_proj_with_mqa(hidden)[0]
            q = self.q_proj(hidden)[0]
        q = q.view(-1, self.num_local_heads, cfg.qk_head_dim)            # [T, h, nope+rope]
        kv_c, k_pe = kv_a.split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        kv_c = self.kv_a_layernorm(kv_c)                                 # [T, kv_lora_rank]
        k_pe = k_pe.unsqueeze(1)                                         # [T, 1, rope]
        q_pe, k_pe = self.rotary_emb(positions, q[..., cfg.qk_nope_head_dim:], k_pe)
        q[..., cfg.qk_nope_head_dim:] = q_pe
        out = self.attn(q, kv_c, k_pe,
                        output_shape=(hidden.shape[0], self.num_local_heads * cfg.v_head_dim))
        return self.o_proj(out)[0]
