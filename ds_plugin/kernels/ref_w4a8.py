"""fp32 torch twins of the W4A8 kernels (the oracles the tests compare against).

Formats: int4_format (weights) and fp8_format (activations). Pure torch.
"""

from __future__ import annotations

import torch

from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8, dequant_groups, quant_groups
from ds_plugin.kernels.int4_format import GROUP, dequant_int4
from ds_plugin.kernels.ref_fp8 import ref_silu_mul


def ref_static_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3(x / scale), saturating at ±448: the twin of w4a8_moe.fp8_static_quant."""
    s = scale.float().reshape(1, 1).expand(x.shape).to(x.device)
    return (x.float() / s).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)  # tensor / tensor: IEEE div


def _quant(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Quantize then dequantize in fp32, statically (one scale) or per token group."""
    if scale is None:
        return dequant_groups(*quant_groups(x))
    return ref_static_quant(x, scale).float() * scale.float().reshape(())


def ref_w4a8_gemm(a_q, a_s, w, w_s, out_dtype=torch.bfloat16) -> torch.Tensor:
    """out (M, N) = dequant(a) @ dequant_int4(w).T in fp32, rounded once. a_s: (M, K/128)
    per-token-group scales, or one static scale (0-d or 1-d)."""
    a = a_q.float() * a_s.float().reshape(()) if a_s.dim() <= 1 else dequant_groups(a_q, a_s)
    return (a @ dequant_int4(w, w_s).t()).to(out_dtype)


def ref_w4a8_fused_moe(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s, a13_scale=None,
                       a2_scale=None) -> torch.Tensor:
    """W4A8 MoE in fp32, one (token, expert) pair at a time.

    x (M, H) bf16; topk (M, k); w13 (E, 2I, H/2) int8 packed int4 with w13_s (E, 2I, H/128);
    w2 (E, H, I/2) with w2_s (E, H, I/128); static scales (one fp32 each) or None for
    dynamic per-token groups. Mirrors the kernel's quantization points: x quantized, gate/up
    rounded to bf16, silu*mul quantized, down weighted and summed in fp32. Returns bf16.
    """
    m, top_k = topk_ids.shape
    xd = _quant(x, a13_scale)
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    for t in range(m):
        for j in range(top_k):
            e = int(topk_ids[t, j])
            h = (xd[t:t + 1] @ dequant_int4(w13[e], w13_s[e]).t()).to(torch.bfloat16)
            a = _quant(ref_silu_mul(h), a2_scale)
            y = a @ dequant_int4(w2[e], w2_s[e]).t()
            out[t] += float(topk_weights[t, j]) * y[0]
    return out.to(torch.bfloat16)


def random_int4_weight(shape, device, generator=None):
    """Random packed int4 weight (uniform over -8..7) with group scales ~ 1/(4 sqrt(K)).

    shape is the unpacked (..., N, K). Returns (packed (..., N, K/2) int8, scales
    (..., N, K/128) fp32), built without a full-precision copy.
    """
    *lead, n, k = shape
    w = torch.randint(-128, 128, (*lead, n, k // 2), dtype=torch.int8, device=device,
                      generator=generator)
    s = torch.rand(*lead, n, k // GROUP, device=device, generator=generator) + 0.5
    return w, s / (4.0 * k ** 0.5)
