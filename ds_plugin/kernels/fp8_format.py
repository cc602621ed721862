"""The FP8 format DeepSeek-V3 checkpoints and our kernels share: the one owner of its numbers.

- Element type: e4m3 (`torch.float8_e4m3fn`), largest finite value 448, rounding to nearest
  even, no infinities.
- Weights: `w` (N, K) e4m3 with `weight_scale_inv` (ceil(N/128), ceil(K/128)) fp32, one
  multiplier per 128x128 block: w ~= w_q * s. Expert stacks add leading dims.
- Activations: `q` (M, K) e4m3 with `s` (M, ceil(K/128)) fp32, one scale per token per 128
  channels: x ~= q * s. A partial last block or group uses the elements it has.
- A block or group whose absmax is 0 gets AMAX_EPS instead, so its scale stays finite and
  its codes are 0.

The torch codec below is production code (the checkpoint generator, the CPU dequantizing
path and the references all use it); `round_e4m3` is its Triton counterpart for kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0
BLOCK = 128
AMAX_EPS = 1e-10


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_grid(shape: tuple[int, ...], block: int = BLOCK) -> tuple[int, ...]:
    """Scale grid of a weight shape: its last two dims counted in blocks."""
    return (*shape[:-2], ceil_div(shape[-2], block), ceil_div(shape[-1], block))


def round_scale_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two, exactly (bit arithmetic, no log2).

    A scale with a non-zero mantissa gets its exponent bumped by one and its mantissa
    cleared; an exact power of two is kept. Rounding up keeps |x / s| <= 448.
    """
    bits = s.contiguous().view(torch.int32)
    exp = (bits >> 23) & 0xFF
    exp = exp + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exp << 23).view(torch.float32)


def _to_e4m3(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


def quant_groups(x: torch.Tensor, group: int = BLOCK, ue8m0: bool = False):
    """Per-token-group quantization: x (M, K) any float -> (q (M, K) e4m3, s (M, G) fp32).

    s = amax(|group|) / 448, optionally rounded up to a power of two (DeepGEMM's UE8M0);
    q = x / s to nearest e4m3. The division is IEEE round-to-nearest (tensor by tensor:
    CUDA torch turns division by a Python scalar into a reciprocal multiply, one ulp off),
    so a kernel can match it bitwise.
    """
    m, k = x.shape
    g = ceil_div(k, group)
    xf = torch.zeros(m, g * group, dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    xg = xf.view(m, g, group)
    amax = xg.abs().amax(dim=2).clamp_min(AMAX_EPS)
    s = amax / torch.full_like(amax, E4M3_MAX)
    if ue8m0:
        s = round_scale_ue8m0(s)
    q = _to_e4m3(xg / s[:, :, None])
    return q.view(m, g * group)[:, :k].contiguous(), s


def dequant_groups(q: torch.Tensor, s: torch.Tensor, group: int = BLOCK) -> torch.Tensor:
    """Inverse of quant_groups, in fp32: (M, K) e4m3 with (M, G) scales -> (M, K) fp32."""
    return q.float() * s.repeat_interleave(group, dim=1)[:, :q.shape[1]]


def quant_block(w: torch.Tensor, block: int = BLOCK):
    """(..., N, K) float -> (w_q (..., N, K) e4m3, weight_scale_inv (..., ceil(N/b), ceil(K/b)) fp32).

    Each block's absmax maps to 448; the scale is the multiplier that dequantizes it, which
    is what DeepSeek's `weight_scale_inv` holds.
    """
    *lead, n, k = w.shape
    gn, gk = ceil_div(n, block), ceil_div(k, block)
    wf = torch.zeros(*lead, gn * block, gk * block, dtype=torch.float32, device=w.device)
    wf[..., :n, :k] = w.float()
    blocks = wf.view(*lead, gn, block, gk, block)
    amax = blocks.abs().amax(dim=(-3, -1)).clamp_min(AMAX_EPS)
    s = amax / torch.full_like(amax, E4M3_MAX)
    q = _to_e4m3(blocks / s[..., :, None, :, None]).view(*lead, gn * block, gk * block)
    return q[..., :n, :k].contiguous(), s


def dequant_block(w_q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32,
                  block: int = BLOCK) -> torch.Tensor:
    """(..., N, K) e4m3 weight with its (..., ceil(N/b), ceil(K/b)) scales -> dtype.

    Multiplies in fp32 and rounds once to `dtype`.
    """
    n, k = w_q.shape[-2:]
    if tuple(s.shape) != block_grid(tuple(w_q.shape), block):
        raise ValueError(f"scale grid {tuple(s.shape)} does not fit weight {tuple(w_q.shape)}: "
                         f"expected {block_grid(tuple(w_q.shape), block)} for {block}x{block} blocks")
    full = s.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return (w_q.float() * full[..., :n, :k]).to(dtype)


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - cos-like similarity, 1 - 2<x,y> / (|x|^2 + |y|^2), in fp64; 0 when equal.

    Scale-free and insensitive to a few rounding flips, so it is the budget for results
    that pass through a second quantization (the MoE's SiLU output).
    """
    x, y = x.double(), y.double()
    denom = (x * x + y * y).sum()
    return float(1 - 2 * (x * y).sum() / denom) if denom > 0 else 0.0


@triton.jit
def round_e4m3(v):
    """fp32 (already within ±448) -> the nearest e4m3 value, still fp32, ties to even.

    Done in fp32 arithmetic so the final cast to e4m3 is exact: the GPU's cvt rounds the
    same way, but the Triton CPU interpreter does not (seen with 3.9: 124.3 -> 64, 7.9 -> 4),
    and the CPU tests run there. Keeps the sign of a value that rounds to zero, as the
    hardware cast does.
    """
    bits = v.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2**-6 e4m3 is subnormal
    up = ((3 - e + 127) << 23).to(tl.float32, bitcast=True)  # 2**(3-e): one e4m3 ulp -> 1
    down = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    t = v * up  # exact, |t| < 16
    t = (t + 12582912.0) - 12582912.0  # 1.5 * 2**23: fp32 add rounds t to an integer (RNE)
    r = (t * down).to(tl.int32, bitcast=True) | ((bits >> 31) << 31)
    return r.to(tl.float32, bitcast=True)
