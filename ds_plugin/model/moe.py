"""DeepSeek-V3 feed-forward blocks (DeepSeek-V3 paper §2.1.2): dense SwiGLU MLP and DeepSeekMoE.

DeepSeekMoE for a token u:

    s_i   = sigmoid(u · e_i)                       affinity of routed expert i
    pick  = top-k over s_i + b_i, restricted to the best `topk_group` of `n_group` groups
            (a group's score is the sum of its two best biased affinities)
    g_i   = s_i / Σ_picked s_j  (norm_topk_prob)    the bias b steers selection, never weights
    out   = Σ_shared FFN_s(u) + routed_scaling_factor · Σ_picked g_i · FFN_i(u)

The routing is executed by vLLM's MoE layer, configured from `DSConfig` fields (grouped
top-k with `e_score_correction_bias`, sigmoid scoring, renormalisation, scaling), so the same
module runs vLLM's CPU, Triton and DeepGEMM expert kernels and its expert parallelism.
The tests check the whole model against an fp32 restatement of this rule (HF transformers'
DeepseekV3 router) on the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ds_plugin._vllm.layers import (FusedMoEFactory, GateLinear, MergedColumnParallelLinear,
                                     RowParallelLinear, SiluAndMul)
from ds_plugin.model.config import DSConfig


class DenseMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate/up fused into one column-parallel GEMM."""

    def __init__(self, hidden_size: int, intermediate_size: int, quant_config, prefix: str,
                 reduce_results: bool = True) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size] * 2, bias=False, quant_config=quant_config,
            prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(
            intermediate_size, hidden_size, bias=False, quant_config=quant_config,
            reduce_results=reduce_results, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)[0]))[0]


class DeepseekV3MoE(nn.Module):
    def __init__(self, cfg: DSConfig, parallel_config, quant_config, prefix: str) -> None:
        super().__init__()
        # Router weights stay unquantized in every DeepSeek release (the gate is bf16 even in
        # the FP8 checkpoints); GateLinear leaves them so whatever quant_config is active.
        self.gate = GateLinear(cfg.hidden_size, cfg.n_routed_experts, prefix=f"{prefix}.gate")
        # CPU: keep the router GEMM a plain F.linear. vLLM would otherwise give it oneDNN's
        # out-parameter kernel (AVX-512 CPUs: torch.empty, then an opaque op writes it), and
        # Inductor (torch 2.13) schedules the traced routing's read of that buffer before
        # the write: NaN top-k weights, wrong tokens in the default compiled mode (issue 10;
        # tests/quant/test_fp8_engine.py forces that kernel's shape on any CPU).
        self.gate._cpu_skip_gemm_dispatch = True
        # Per-expert load-balancing bias, fp32 as released; a selection-only offset.
        self.gate.e_score_correction_bias = nn.Parameter(
            torch.empty(cfg.n_routed_experts, dtype=torch.float32), requires_grad=False)
        self.shared_experts = None
        if cfg.n_shared_experts:
            # The MoE layer adds the shared output before its single all-reduce.
            self.shared_experts = DenseMLP(
                cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts,
                quant_config, f"{prefix}.shared_experts", reduce_results=False)
        eplb = parallel_config.eplb_config
        self.experts = FusedMoEFactory(
            num_experts=cfg.n_routed_experts, top_k=cfg.num_experts_per_tok,
            hidden_size=cfg.hidden_size, intermediate_size=cfg.moe_intermediate_size,
            renormalize=cfg.norm_topk_prob, quant_config=quant_config,
            use_grouped_topk=True, num_expert_group=cfg.n_group, topk_group=cfg.topk_group,
            scoring_func=cfg.scoring_func, routed_scaling_factor=cfg.routed_scaling_factor,
            # Folded into the top-k weights, as the paper writes it; scaling the output
            # instead makes vLLM shrink the shared output in fp16, a different sum.
            apply_routed_scale_to_output=False,
            e_score_correction_bias=self.gate.e_score_correction_bias,
            enable_eplb=parallel_config.enable_eplb,
            num_redundant_experts=eplb.num_redundant_experts,
            gate=self.gate, shared_experts=self.shared_experts,
            router_logits_dtype=self.gate.out_dtype, prefix=f"{prefix}.experts")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The runner computes router logits with `gate` itself, so it gets x twice.
        return self.experts(hidden_states=x, router_logits=x)
