"""Run-time INT8 quantization of activations, optionally fused with SiLU*mul (the MoE's middle).

Granularities and rounding are int8_format's; `int8_format.quant_act` is the bitwise twin of
`int8_act_quant` (same division, same round-to-nearest-even, same clamp).

- per token: one program per row, two passes over K (absmax, then quantize), so a row of any
  width (DeepSeek's 18432-wide dense intermediate) needs one program and no scratch.
- per token per 128 channels: fp8_quant's layout, a few groups per program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.int8_format import (AMAX_EPS, BLOCK, INT8_MAX, PER_GROUP, PER_TOKEN,
                                           ceil_div, round_int8)

_EPS = tl.constexpr(AMAX_EPS)
_MAX = tl.constexpr(INT8_MAX)
# Per-group programs handle this many 128-wide groups (as fp8_quant does).
_GROUPS_PER_PROG = 4
# Per-token programs walk K in chunks of this many channels.
_TOKEN_CHUNK = 1024


@triton.jit
def _load_act(x_ptr, x_stride, row, cols, k, SILU_MUL: tl.constexpr):
    # fp32 activation values at `cols` (0 outside [0, k)); with SILU_MUL, silu(gate) * up
    # from a (T, 2k) gate|up row.
    mask = cols < k
    base = x_ptr + row * x_stride
    g = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        u = tl.load(base + k + cols, mask=mask, other=0.0).to(tl.float32)
        g = g / (1.0 + tl.exp(-g)) * u
    return g


@triton.jit
def _token_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, k,
                        CHUNK: tl.constexpr, SILU_MUL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNK)
    amax = tl.zeros([CHUNK], dtype=tl.float32)
    for c in range(0, k, CHUNK):
        amax = tl.maximum(amax, tl.abs(_load_act(x_ptr, x_stride, row, c + offs, k, SILU_MUL)))
    s = tl.math.div_rn(tl.maximum(tl.max(amax, axis=0), _EPS), _MAX)
    for c in range(0, k, CHUNK):
        cols = c + offs
        v = _load_act(x_ptr, x_stride, row, cols, k, SILU_MUL)
        q = round_int8(tl.math.div_rn(v, s))
        tl.store(q_ptr + row * q_stride + cols, q.to(tl.int8), mask=cols < k)
    tl.store(s_ptr + row, s)


@triton.jit
def _group_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, s_stride, k, n_groups,
                        GROUP: tl.constexpr, GPP: tl.constexpr, SILU_MUL: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g_offs = tl.program_id(1) * GPP + tl.arange(0, GPP)
    cols = g_offs[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    v = _load_act(x_ptr, x_stride, row, cols, k, SILU_MUL)
    s = tl.math.div_rn(tl.maximum(tl.max(tl.abs(v), axis=1), _EPS), _MAX)
    q = round_int8(tl.math.div_rn(v, s[:, None]))
    tl.store(q_ptr + row * q_stride + cols, q.to(tl.int8), mask=cols < k)
    tl.store(s_ptr + row * s_stride + g_offs, s, mask=g_offs < n_groups)


def _launch(x: torch.Tensor, k: int, granularity: str, silu_mul: bool, name: str):
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{name}: x must be 2-D with unit stride in the last dim, got "
                         f"shape {tuple(x.shape)} strides {x.stride()}")
    m = x.shape[0]
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    if granularity == PER_TOKEN:
        s = torch.empty(m, 1, dtype=torch.float32, device=x.device)
        if m and k:
            _token_quant_kernel[(m,)](x, x.stride(0), q, q.stride(0), s, k,
                                      CHUNK=min(_TOKEN_CHUNK, triton.next_power_of_2(k)),
                                      SILU_MUL=silu_mul)
        elif m:
            s.fill_(AMAX_EPS / INT8_MAX)
        return q, s
    if granularity != PER_GROUP:
        raise ValueError(f"{name}: granularity must be {PER_TOKEN!r} or {PER_GROUP!r}, "
                         f"got {granularity!r}")
    g = ceil_div(k, BLOCK)
    s = torch.empty(m, g, dtype=torch.float32, device=x.device)
    if m and k:
        _group_quant_kernel[(m, ceil_div(g, _GROUPS_PER_PROG))](
            x, x.stride(0), q, q.stride(0), s, s.stride(0), k, g,
            GROUP=BLOCK, GPP=_GROUPS_PER_PROG, SILU_MUL=silu_mul)
    return q, s


def int8_act_quant(x: torch.Tensor, granularity: str = PER_TOKEN):
    """Quantize activations to int8 at run time.

    Args:
        x: (M, K) bf16/fp16/fp32, last dim contiguous (row stride free).
        granularity: "token" (scales (M, 1), against per-channel weights) or "group"
            (scales (M, ceil(K/128)), against 128x128 block weights).
    Returns:
        q (M, K) int8 and s fp32 with x ~= q * s.
    """
    return _launch(x, x.shape[-1], granularity, False, "int8_act_quant")


def int8_silu_mul_quant(gate_up: torch.Tensor, granularity: str = PER_TOKEN):
    """silu(gate) * up, quantized like int8_act_quant, in one kernel.

    Args:
        gate_up: (T, 2I), gate in columns [0, I), up in [I, 2I); last dim contiguous.
    Returns:
        q (T, I) int8 and its scales.
    """
    if gate_up.shape[-1] % 2:
        raise ValueError(f"int8_silu_mul_quant: gate_up last dim must be even, got "
                         f"{tuple(gate_up.shape)}")
    return _launch(gate_up, gate_up.shape[-1] // 2, granularity, True, "int8_silu_mul_quant")
