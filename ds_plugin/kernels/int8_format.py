"""The INT8 formats of DeepSeek INT8 checkpoints and our kernels: the one owner of their numbers.

Two weight layouts, both symmetric (no zero points), as SGLang's loaders read them:

- Per channel (`w8a8_int8`, e.g. meituan/DeepSeek-R1-Channel-INT8): `weight` int8 (N, K) and
  `weight_scale` fp32 (N, 1), one multiplier per output row: w ~= w_q * s.
- Per 128x128 block (`blockwise_int8`, e.g. meituan/DeepSeek-R1-Block-INT8): `weight` int8
  (N, K) and `weight_scale_inv` fp32 (ceil(N/128), ceil(K/128)), fp8_format's block grid.

Activations are quantized at run time, to the granularity of the weights' K scales:
per token (one fp32 scale per row, (M, 1)) against per-channel weights, per token per 128
channels ((M, ceil(K/128)), fp8_format's group layout) against block weights. Both round
to nearest, ties to even, and clamp to [-127, 127] (-128 is never produced; a checkpoint's
-128 still dequantizes). A row or group whose absmax is 0 gets AMAX_EPS instead, so its
scale stays finite and its codes are 0.

Products: an int8 x int8 dot of K terms is exact in int32 for K < 2**17 (127**2 * K < 2**31),
so the channel GEMM scales once per output and the block GEMM once per 128-deep K block.

The torch codec below is production code (checkpoint generator, CPU dequantizing path,
references); `round_int8` is its Triton counterpart for kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_format import AMAX_EPS, BLOCK, block_grid, ceil_div, dequant_block

INT8_MAX = 127.0
# Granularities of activation scales: one per token, or one per token per 128 channels.
PER_TOKEN = "token"
PER_GROUP = "group"

__all__ = ["AMAX_EPS", "BLOCK", "INT8_MAX", "PER_GROUP", "PER_TOKEN", "block_grid", "ceil_div",
           "dequant_channel", "dequant_int8_block", "dequant_act", "dequant_weight",
           "is_channel_scale", "quant_act", "quant_channel",
           "quant_int8_block", "round_int8", "snap_to_int_grid"]


def _round_clamp(v: torch.Tensor) -> torch.Tensor:
    # torch.round is round-half-to-even, as the kernels' round_int8.
    return torch.round(v).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def _pow2_up(s: torch.Tensor) -> torch.Tensor:
    from ds_plugin.kernels.fp8_format import round_scale_ue8m0

    return round_scale_ue8m0(s.float())


def quant_act(x: torch.Tensor, granularity: str = PER_TOKEN, group: int = BLOCK):
    """Run-time activation quantization: x (M, K) float -> (q (M, K) int8, s fp32).

    s = amax / 127 per token ((M, 1)) or per token per `group` channels ((M, ceil(K/group)));
    q = x / s rounded to nearest even. The division is tensor by tensor (IEEE round to
    nearest), so a kernel can match it bitwise.
    """
    m, k = x.shape
    if granularity == PER_TOKEN:
        xf = x.float()
        amax = xf.abs().amax(dim=1, keepdim=True).clamp_min(AMAX_EPS) if k else \
            torch.full((m, 1), AMAX_EPS, device=x.device)
        s = amax / torch.full_like(amax, INT8_MAX)
        return _round_clamp(xf / s), s
    if granularity != PER_GROUP:
        raise ValueError(f"quant_act: granularity must be {PER_TOKEN!r} or {PER_GROUP!r}, "
                         f"got {granularity!r}")
    g = ceil_div(k, group)
    xf = torch.zeros(m, g * group, dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    xg = xf.view(m, g, group)
    amax = xg.abs().amax(dim=2).clamp_min(AMAX_EPS)
    s = amax / torch.full_like(amax, INT8_MAX)
    q = _round_clamp(xg / s[:, :, None])
    return q.view(m, g * group)[:, :k].contiguous(), s


def dequant_act(q: torch.Tensor, s: torch.Tensor, group: int = BLOCK) -> torch.Tensor:
    """Inverse of quant_act, in fp32 (the granularity is read from s's shape)."""
    if s.shape[1] == 1:  # per token (or a single group: the same thing)
        return q.float() * s
    return q.float() * s.repeat_interleave(group, dim=1)[:, :q.shape[1]]


def quant_channel(w: torch.Tensor, pow2: bool = False):
    """(..., N, K) float -> (w_q (..., N, K) int8, weight_scale (..., N, 1) fp32).

    Each row's absmax maps to 127. `pow2` rounds every scale up to a power of two, so that
    weights built on a power-of-two grid (snap_to_int_grid) are represented exactly.
    """
    amax = w.float().abs().amax(dim=-1, keepdim=True).clamp_min(AMAX_EPS)
    s = amax / torch.full_like(amax, INT8_MAX)
    if pow2:
        s = _pow2_up(s)
    return _round_clamp(w.float() / s), s.contiguous()


def dequant_channel(w_q: torch.Tensor, s: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(..., N, K) int8 with (..., N, 1) fp32 scales -> dtype (fp32 product, one rounding)."""
    want = (*w_q.shape[:-1], 1)
    if tuple(s.shape) != want:
        raise ValueError(f"per-channel scales {tuple(s.shape)} do not fit int8 weight "
                         f"{tuple(w_q.shape)}: expected {want} (one scale per output row)")
    return (w_q.float() * s.float()).to(dtype)


def quant_int8_block(w: torch.Tensor, pow2: bool = False, block: int = BLOCK):
    """(..., N, K) float -> (w_q (..., N, K) int8, weight_scale_inv (..., ceil(N/b), ceil(K/b))).

    Each 128x128 block's absmax maps to 127; `pow2` as in quant_channel.
    """
    *lead, n, k = w.shape
    gn, gk = ceil_div(n, block), ceil_div(k, block)
    wf = torch.zeros(*lead, gn * block, gk * block, dtype=torch.float32, device=w.device)
    wf[..., :n, :k] = w.float()
    blocks = wf.view(*lead, gn, block, gk, block)
    amax = blocks.abs().amax(dim=(-3, -1)).clamp_min(AMAX_EPS)
    s = amax / torch.full_like(amax, INT8_MAX)
    if pow2:
        s = _pow2_up(s)
    q = _round_clamp(blocks / s[..., :, None, :, None]).view(*lead, gn * block, gk * block)
    return q[..., :n, :k].contiguous(), s.contiguous()


def dequant_int8_block(w_q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype = torch.float32,
                       block: int = BLOCK) -> torch.Tensor:
    """(..., N, K) int8 with block scales -> dtype (the block grid is fp8_format's)."""
    if w_q.dtype != torch.int8:
        raise ValueError(f"dequant_int8_block: weight is {w_q.dtype}, expected int8")
    return dequant_block(w_q, s, dtype, block)


def is_channel_scale(w: torch.Tensor, s: torch.Tensor) -> bool:
    """Whether s is per-channel ((..., N, 1)) for weight w (..., N, K), else block scales."""
    return tuple(s.shape) == (*w.shape[:-1], 1)


def dequant_weight(w_q: torch.Tensor, s: torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """int8 weight with either layout's scales -> dtype. An expert stack (E, N, K) is decoded
    one expert at a time, so the fp32 temporary is one expert's, not the stack's."""
    deq = dequant_channel if is_channel_scale(w_q, s) else dequant_int8_block
    if w_q.dim() < 3:
        return deq(w_q, s, dtype)
    out = torch.empty(w_q.shape, dtype=dtype, device=w_q.device)
    for e in range(w_q.shape[0]):
        out[e] = deq(w_q[e], s[e], dtype)
    return out


def snap_to_int_grid(w: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Round w (..., N, K) to integers in [-levels, levels] times one power of two per
    tensor (fp32). Any symmetric int8 quantization with power-of-two scales (per channel
    or per block) represents the result exactly, and so does bf16 (levels <= 255): the
    checkpoint generator uses it so a quantized checkpoint has an exact bf16 twin."""
    amax = float(w.float().abs().max()) or 1.0
    step = float(_pow2_up(torch.tensor([amax / levels]))[0])
    return (torch.round(w.float() / step).clamp(-levels, levels) * step).contiguous()


@triton.jit
def round_int8(v):
    """fp32 -> the nearest integer in [-127, 127], ties to even, still fp32.

    The 1.5 * 2**23 add rounds in fp32 arithmetic (exact for |v| < 2**22 after the clamp), so
    compiled code and the CPU interpreter agree and the int8 cast that follows is exact.
    """
    v = tl.minimum(tl.maximum(v, -127.0), 127.0)
    return (v + 12582912.0) - 12582912.0
