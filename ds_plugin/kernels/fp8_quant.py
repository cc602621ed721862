"""Per-token-group FP8 (e4m3) quantization of activations, optionally fused with SiLU*mul.

Formats are fp8_format's; `fp8_format.quant_groups` is the bitwise twin of `fp8_act_quant`
(same division, same rounding, same power-of-two scale rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_format import (AMAX_EPS, BLOCK, E4M3_MAX, FP8, ceil_div, dequant_block,
                                          round_e4m3)

# Groups handled by one program: enough work per program to hide the load latency,
# few enough that a 4096-token batch still spreads over every SM.
_GROUPS_PER_PROG = 4
# Triton kernels may only read module globals that are constexpr.
_EPS = tl.constexpr(AMAX_EPS)
_MAX = tl.constexpr(E4M3_MAX)


@triton.jit
def _round_ue8m0(s):
    # Power-of-two round-up by bit arithmetic, so it equals fp8_format.round_scale_ue8m0 exactly.
    bits = s.to(tl.int32, bitcast=True)
    exp = (bits >> 23) & 0xFF
    exp = exp + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return (exp << 23).to(tl.float32, bitcast=True)


@triton.jit
def _quant_store(v, row, g_offs, cols, k, q_ptr, q_stride, s_ptr, s_stride, n_groups,
                 UE8M0: tl.constexpr):
    # v: (G, 128) fp32 with out-of-range channels already zero.
    amax = tl.maximum(tl.max(tl.abs(v), axis=1), _EPS)
    s = tl.math.div_rn(amax, _MAX)
    if UE8M0:
        s = _round_ue8m0(s)
    q = tl.math.div_rn(v, s[:, None])
    q = round_e4m3(tl.minimum(tl.maximum(q, -_MAX), _MAX))
    mask = cols < k
    tl.store(q_ptr + row * q_stride + cols, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row * s_stride + g_offs, s, mask=g_offs < n_groups)


@triton.jit
def _act_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, s_stride, k, n_groups,
                      GROUP_SIZE: tl.constexpr, GPP: tl.constexpr, UE8M0: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g_offs = tl.program_id(1) * GPP + tl.arange(0, GPP)
    cols = g_offs[:, None] * GROUP_SIZE + tl.arange(0, GROUP_SIZE)[None, :]
    v = tl.load(x_ptr + row * x_stride + cols, mask=cols < k, other=0.0).to(tl.float32)
    _quant_store(v, row, g_offs, cols, k, q_ptr, q_stride, s_ptr, s_stride, n_groups, UE8M0)


@triton.jit
def _silu_mul_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, s_stride, k, n_groups,
                           GROUP_SIZE: tl.constexpr, GPP: tl.constexpr, UE8M0: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g_offs = tl.program_id(1) * GPP + tl.arange(0, GPP)
    cols = g_offs[:, None] * GROUP_SIZE + tl.arange(0, GROUP_SIZE)[None, :]
    mask = cols < k
    g = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * x_stride + k + cols, mask=mask, other=0.0).to(tl.float32)
    v = g / (1.0 + tl.exp(-g)) * u
    _quant_store(v, row, g_offs, cols, k, q_ptr, q_stride, s_ptr, s_stride, n_groups, UE8M0)


def _launch(kernel, x: torch.Tensor, k: int, ue8m0: bool, name: str):
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name}: x must be 2-D with unit stride in the last dim, got "
                         f"shape {tuple(x.shape)} strides {x.stride()}")
    m = x.shape[0]
    g = ceil_div(k, BLOCK)
    q = torch.empty(m, k, dtype=FP8, device=x.device)
    s = torch.empty(m, g, dtype=torch.float32, device=x.device)
    if m and k:
        grid = (m, ceil_div(g, _GROUPS_PER_PROG))
        kernel[grid](x, x.stride(0), q, q.stride(0), s, s.stride(0), k, g,
                     GROUP_SIZE=BLOCK, GPP=_GROUPS_PER_PROG, UE8M0=ue8m0)
    return q, s


def fp8_act_quant(x: torch.Tensor, ue8m0: bool = False):
    """Quantize activations per token per 128 channels.

    Args:
        x: (M, K) bf16/fp16/fp32, last dim contiguous (row stride free). K need not be a
            multiple of 128.
        ue8m0: round each scale up to a power of two (DeepGEMM's UE8M0 scale format).
    Returns:
        q: (M, K) float8_e4m3fn. s: (M, ceil(K/128)) float32, row-major; x ~= q * s.
    """
    return _launch(_act_quant_kernel, x, x.shape[-1], ue8m0, "fp8_act_quant")


def fp8_silu_mul_quant(gate_up: torch.Tensor, ue8m0: bool = False):
    """silu(gate) * up, quantized like fp8_act_quant, in one pass (the MoE middle step).

    Args:
        gate_up: (T, 2I), gate in columns [0, I), up in [I, 2I); last dim contiguous.
    Returns:
        q: (T, I) float8_e4m3fn. s: (T, ceil(I/128)) float32.
    """
    if gate_up.shape[-1] % 2:
        raise ValueError(f"fp8_silu_mul_quant: gate_up last dim must be even, got {gate_up.shape}")
    return _launch(_silu_mul_quant_kernel, gate_up, gate_up.shape[-1] // 2, ue8m0,
                   "fp8_silu_mul_quant")


def fp8_block_dequant(w_q: torch.Tensor, s: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """(..., N, K) fp8 weight with (..., ceil(N/128), ceil(K/128)) block scales -> dtype.

    Torch only (it runs once at load on the CPU path): fp8_format's codec.
    """
    return dequant_block(w_q, s, dtype)
