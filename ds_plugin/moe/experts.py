"""Routed-expert execution shared by the plugin's MoE quant methods (ds_fp8, w4afp8).

A method owns its checkpoint layout and load-time checks; at load it picks one of these
classes for the device, and its `apply` only calls the chosen one:

- `TritonFp8Experts` / `TritonW4A8Experts`: block-FP8 / packed int4 weights kept as stored,
  our fused Triton MoEs (CUDA, or the Triton interpreter on CPU when a test asks for the
  CUDA-side code).
- `CpuGroupedExperts`: weights dequantized to the model dtype once at load; each expert runs
  only on the tokens routed to it (grouped by expert), so a token costs top-k expert FFNs,
  not E of them. vLLM traces the MoE layer's forward with Dynamo on CPU, and the per-expert
  grouping is data dependent, so it runs as one opaque op (`ds_plugin::cpu_grouped_experts`).

Expert parallelism: vLLM's `expert_map` maps global expert ids to this rank's (-1: another
rank's expert, whose rank adds that pair in the all-reduce). The CPU path skips such pairs;
the fused kernel wants a valid id for every pair, so it gets local id 0 with weight 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def local_routing(topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  expert_map: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global -> local expert ids; pairs of other ranks get weight 0 and a valid local id."""
    if expert_map is None:
        return topk_weights, topk_ids
    local = expert_map[topk_ids.long()]
    weights = torch.where(local >= 0, topk_weights, torch.zeros_like(topk_weights))
    return weights, local.clamp_min(0).to(topk_ids.dtype)


def local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    """Global -> local expert ids, -1 for another rank's expert."""
    return topk_ids if expert_map is None else expert_map[topk_ids.long()].to(topk_ids.dtype)


def grouped_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """sum_j topk_weights[t, j] * FFN_{topk_ids[t, j]}(x[t]), each expert on its tokens only.

    x (M, H); topk_weights (M, k) float; topk_ids (M, k) int, -1 for a pair this rank does
    not hold (skipped); w13 (E, 2I, H) gate rows then up rows; w2 (E, H, I); weights in x's
    dtype. Products round to x's dtype as a bf16 GEMM
    would; the weighted sum is fp32 and rounds once.
    """
    m, top_k = topk_ids.shape
    i = w2.shape[2]
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    start = int((flat < 0).sum())  # other ranks' pairs sort first and are skipped
    counts = torch.bincount(flat[flat >= 0], minlength=w13.shape[0]).tolist()
    weights = topk_weights.reshape(-1).float()
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    for e, n in enumerate(counts):
        if n == 0:
            continue
        pairs = order[start:start + n]
        start += n
        tokens = pairs // top_k
        gate_up = x[tokens] @ w13[e].t()                                  # [n, 2I]
        y = (F.silu(gate_up[:, :i]) * gate_up[:, i:]) @ w2[e].t()         # [n, H]
        out.index_add_(0, tokens, y.float() * weights[pairs, None])
    return out.to(x.dtype)


@torch.library.custom_op("ds_plugin::cpu_grouped_experts", mutates_args=())
def cpu_grouped_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """`grouped_experts` as one op Dynamo does not trace into (its loop is data dependent)."""
    return grouped_experts(x, topk_weights, topk_ids, w13, w2)


@cpu_grouped_experts.register_fake
def _(x, topk_weights, topk_ids, w13, w2):
    return torch.empty_like(x)


class CpuGroupedExperts:
    """Dequantized experts on CPU: the quant method hands over model-dtype w13 / w2."""

    name = "CPU (experts dequantized to the model dtype at load; top-k experts per token)"

    def __call__(self, layer, x, topk_weights, topk_ids) -> torch.Tensor:
        return cpu_grouped_experts(x, topk_weights, local_ids(topk_ids, layer.expert_map),
                                   layer.w13_weight, layer.w2_weight)


class TritonFp8Experts:
    """Block-FP8 experts on our fused Triton MoE (ds_plugin.kernels.fp8_fused_moe)."""

    name = "CUDA fp8 (Triton fused MoE)"

    def __call__(self, layer, x, topk_weights, topk_ids) -> torch.Tensor:
        from ds_plugin.kernels import fp8_fused_moe

        weights, ids = local_routing(topk_weights, topk_ids, layer.expert_map)
        return fp8_fused_moe(x, weights, ids, layer.w13_weight, layer.w13_weight_scale_inv,
                             layer.w2_weight, layer.w2_weight_scale_inv)


class TritonW4A8Experts:
    """int4 experts with FP8 activations on our fused Triton MoE (kernels.w4a8_moe); the
    static scales, when used, are the layer's per-tensor w13/w2 input scales."""

    name = "CUDA w4a8 (Triton fused MoE: int4 experts, FP8 activations)"

    def __init__(self, static: bool) -> None:
        self.static = static

    def __call__(self, layer, x, topk_weights, topk_ids) -> torch.Tensor:
        from ds_plugin.kernels.w4a8_moe import w4a8_fused_moe

        weights, ids = local_routing(topk_weights, topk_ids, layer.expert_map)
        a13, a2 = ((layer.w13_input_scale, layer.w2_input_scale) if self.static
                   else (None, None))
        return w4a8_fused_moe(x, weights, ids, layer.w13_weight, layer.w13_weight_scale_inv,
                              layer.w2_weight, layer.w2_weight_scale_inv, a13, a2)
