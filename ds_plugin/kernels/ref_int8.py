"""fp32 torch twins of the INT8 kernels (the oracles the tests compare against).

Formats and codec are int8_format's; MoE experts stack weights per expert as fp8's do:
w13 (E, 2I, H) gate rows then up rows, w2 (E, H, I), scales (E, N, 1) per channel or
(E, ceil(N/128), ceil(K/128)) per block. Pure torch.
"""

from __future__ import annotations

import torch

from ds_plugin.kernels.int8_format import (BLOCK, PER_GROUP, PER_TOKEN, ceil_div, dequant_act,
                                           dequant_weight, is_channel_scale, quant_act)
from ds_plugin.kernels.ref_fp8 import ref_silu_mul


def act_granularity(w: torch.Tensor, s: torch.Tensor) -> str:
    """The activation quantization a weight's scales call for (per token / per group)."""
    return PER_TOKEN if is_channel_scale(w, s) else PER_GROUP


def ref_int8_gemm_nt(a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16) -> torch.Tensor:
    """out (M, N) = dequant(a) @ dequant(b).T in fp32, rounded once to out_dtype."""
    return (dequant_act(a_q, a_s) @ dequant_weight(b_q, b_s).t()).to(out_dtype)


def ref_int8_fused_moe(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s) -> torch.Tensor:
    """INT8 MoE in fp32, one (token, expert) pair at a time.

    Mirrors the kernel's quantization points: x quantized (per token, or per token group
    for block weights), gate/up rounded to bf16, silu*mul quantized again, the down product
    weighted and summed in fp32. Returns (M, H) bf16.
    """
    m, top_k = topk_ids.shape
    gran = act_granularity(w13[0], w13_s[0])
    xd = dequant_act(*quant_act(x, gran))
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    for t in range(m):
        for j in range(top_k):
            e = int(topk_ids[t, j])
            h = (xd[t:t + 1] @ dequant_weight(w13[e], w13_s[e]).t()).to(torch.bfloat16)
            a = dequant_act(*quant_act(ref_silu_mul(h), gran))
            y = a @ dequant_weight(w2[e], w2_s[e]).t()
            out[t] += float(topk_weights[t, j]) * y[0]
    return out.to(torch.bfloat16)


def random_int8_weight(shape, device, blockwise: bool, generator=None):
    """Random int8 weight (uniform codes in [-127, 127]) with scales ~ 1/(64 sqrt(K)), so
    products have unit scale. Built without a full-precision copy.

    Returns (w (..., N, K) int8, scales (..., N, 1) or (..., ceil(N/128), ceil(K/128)) fp32).
    """
    *lead, n, k = shape
    w = torch.randint(-127, 128, tuple(shape), dtype=torch.int8, device=device,
                      generator=generator)
    grid = (*lead, ceil_div(n, BLOCK), ceil_div(k, BLOCK)) if blockwise else (*lead, n, 1)
    s = torch.rand(grid, device=device, generator=generator) + 0.5
    return w, s / (64.0 * k ** 0.5)
