"""fp32 torch twins of the block-FP8 kernels (the oracles the tests compare against).

The formats (and their codec, `quant_groups` / `dequant_block` ...) are fp8_format's; MoE
experts stack weights per expert: w13 (E, 2I, K) gate rows then up rows, w2 (E, H, I).
`fp8_format.quant_groups` is itself the bitwise twin of the `fp8_act_quant` kernel.
Pure torch: this file is readable on its own and runs anywhere.
"""

from __future__ import annotations

import torch

from ds_plugin.kernels.fp8_moe_prefill import moe_align_capacity
from ds_plugin.kernels.fp8_format import (BLOCK, FP8, ceil_div, dequant_block, dequant_groups,
                                          quant_groups)


def ref_block_gemm_nt(a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16) -> torch.Tensor:
    """out (M, N) = dequant(a) @ dequant(b).T, accumulated in fp32, rounded once to out_dtype."""
    a = dequant_groups(a_q, a_s)
    b = dequant_block(b_q, b_s)
    return (a @ b.t()).to(out_dtype)


def ref_moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort (token, slot) pairs by expert and pad each expert's run to a multiple of block_m.

    The torch twin of fp8_moe.moe_align (and its path for batches past one program).

    Args:
        topk_ids: (M, k) int, expert of each token's k-th choice (ids in [0, num_experts)).
    Returns:
        sorted_ids: (P,) int32, flat pair index t*k + j, or M*k for a padding row.
        block_expert: (P / block_m,) int32, the expert of each block, -1 past the end.
        P is an upper bound, M*k + min(M*k, E)*(block_m - 1), rounded up to block_m.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    pairs = flat.numel()
    dev = flat.device
    cap = moe_align_capacity(pairs, num_experts, block_m)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts.index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    cnt_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    rank = torch.arange(pairs, device=dev) - cnt_start[expert_of]
    sorted_ids = torch.full((cap,), pairs, dtype=torch.int32, device=dev)
    sorted_ids[pad_start[expert_of] + rank] = order.to(torch.int32)
    block_start = torch.arange(0, cap, block_m, device=dev)
    block_expert = torch.searchsorted(pad_end, block_start, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert


def ref_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(T, 2I) -> (T, I) fp32: silu(gate) * up, gate = first half, up = second half."""
    i = gate_up.shape[1] // 2
    g, u = gate_up[:, :i].float(), gate_up[:, i:].float()
    return g * torch.sigmoid(g) * u


def ref_fused_moe(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s, ue8m0: bool = False):
    """Block-FP8 MoE in fp32, one (token, expert) pair at a time.

    x: (M, H) bf16. topk_weights: (M, k) fp32. topk_ids: (M, k) int. w13: (E, 2I, H) fp8 with
    w13_s (E, ceil(2I/128), ceil(H/128)); w2: (E, H, I) fp8 with w2_s. Mirrors the kernel's
    quantization points: x is quantized per token group, the gate/up product is rounded to
    bf16, silu*mul is quantized again, the down product is weighted and summed in fp32.
    Returns (M, H) bf16.
    """
    m, top_k = topk_ids.shape
    xq, xs = quant_groups(x, ue8m0=ue8m0)
    xd = dequant_groups(xq, xs)
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    for t in range(m):
        for j in range(top_k):
            e = int(topk_ids[t, j])
            h = (xd[t:t + 1] @ dequant_block(w13[e], w13_s[e]).t()).to(torch.bfloat16)
            a = ref_silu_mul(h)
            aq, as_ = quant_groups(a, ue8m0=ue8m0)
            y = dequant_groups(aq, as_) @ dequant_block(w2[e], w2_s[e]).t()
            out[t] += float(topk_weights[t, j]) * y[0]
    return out.to(torch.bfloat16)


def random_fp8_weight(shape, device, generator=None):
    """Random block-FP8 weight with normal-ish codes and block scales ~ 1/sqrt(K).

    Built without a full-precision copy (an expert stack for DeepSeek-V3 is 7.5 G codes).
    Returns (w_q fp8 of `shape`, scales (..., ceil(N/128), ceil(K/128)) fp32).
    """
    *lead, n, k = shape
    w = torch.empty(shape, dtype=FP8, device=device)
    flat = w.view(-1, n, k)
    for i in range(flat.shape[0]):
        flat[i] = torch.randn(n, k, device=device, generator=generator).to(FP8)
    s = torch.rand(*lead, ceil_div(n, BLOCK), ceil_div(k, BLOCK), device=device,
                   generator=generator) + 0.5
    return w, s / k ** 0.5
