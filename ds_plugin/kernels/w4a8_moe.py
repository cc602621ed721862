"""Fused MoE over int4 experts with FP8 activations (W4AFP8): align, grouped GEMM (gate+up),
SiLU*mul + FP8 quant, grouped GEMM (down, routing weight applied), combine.

The structure is fp8_moe's (its `moe_align` and block-row layout, fp8_quant's activation
quantizers): only the weight read differs. Each 128-wide K group of a weight row is 64
bytes of packed int4 (int4_format); a program loads them, expands every nibble to its
exact FP8 (e5m2) code in registers, and feeds FP8 MMAs against the e4m3 activations,
scaling each group's partial product by its weight scale before adding it up in fp32.

The weights are read in int4_format's kernel layout (converted once at load). A 32-bit word
of it (8 consecutive K values) expands with four masks into fp16 pairs (the 0x6400 exponent
trick: 1024 + u, then one fp16 add or fma), whose high bytes are exactly the values'
e5m2 codes; two byte permutes (`prmt`) gather them into two words, K values 0-3 and 4-7.
e5m2 x e4m3 is a native Hopper FP8 MMA, and int4 values are exact in e5m2. The activations
are read in the same order (columns 8c+r and 8c+4+r for r < 4), so nothing is reordered at
run time. Under the Triton interpreter (CPU tests) the same two words come from shifts and
casts.

Activation scales: static (one fp32 per tensor, the checkpoint's `input_scale`, maxed over
experts as SGLang does) or dynamic (per token per 128 channels, as fp8_moe). All shapes
depend on the batch size only, so the whole path is CUDA-graph capturable.
`ref_w4a8.ref_w4a8_fused_moe` is the fp32 twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8, ceil_div, round_e4m3
from ds_plugin.kernels.fp8_moe import moe_align, moe_block_m
from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_silu_mul_quant
from ds_plugin.kernels.int4_format import GROUP

_MAX = tl.constexpr(E4M3_MAX)


# One call per 32-bit word of the kernel layout: $0 = e5m2 of K values 0-3, $1 = of 4-7.
# fp16 constants: 0x6400 = 1024, 0x6408 = 1032, 0x2C00 = 1/16, 0xD480 = -72; a nibble u at
# bits 0-3 of a lane gives 1024 + u (minus 1032: u - 8), at bits 4-7 1024 + 16u (/16 - 72).
_INT4_TO_E5M2_ASM = tl.constexpr("""{
.reg .b32 m, k0, k1, k2, a, b, c, d, w8;
mov.b32 m, 0x64006400;
mov.b32 k0, 0x64086408;
mov.b32 k1, 0x2C002C00;
mov.b32 k2, 0xD480D480;
lop3.b32 a, $2, 0x000F000F, m, 0xEA;
lop3.b32 b, $2, 0x00F000F0, m, 0xEA;
shr.u32 w8, $2, 8;
lop3.b32 c, w8, 0x000F000F, m, 0xEA;
lop3.b32 d, w8, 0x00F000F0, m, 0xEA;
sub.f16x2 a, a, k0;
fma.rn.f16x2 b, b, k1, k2;
sub.f16x2 c, c, k0;
fma.rn.f16x2 d, d, k1, k2;
prmt.b32 $0, a, b, 0x7351;
prmt.b32 $1, c, d, 0x7351;
}""")


@triton.jit
def _nibbles_e5m2(b, ROWS: tl.constexpr):
    # b (ROWS, 16, 2) kernel-layout bytes -> (ROWS, 64) e5m2, low nibble first per byte.
    w = b.to(tl.int32) & 0xFF
    lo = (w & 0xF) - 8
    hi = (w >> 4) - 8
    return tl.reshape(tl.join(lo, hi), (ROWS, 64)).to(tl.float32).to(tl.float8e5)


@triton.jit
def int4_to_fp8(w, ROWS: tl.constexpr, ASM: tl.constexpr):
    """(ROWS, 64) int8, kernel layout -> (v0, v1), each (ROWS, 64) e5m2: position 4c + r
    holds K value 8c + r (v0) and 8c + 4 + r (v1), r < 4."""
    if ASM:
        v0, v1 = tl.inline_asm_elementwise(_INT4_TO_E5M2_ASM, "=r,=r,r", [w],
                                           dtype=(tl.int8, tl.int8), is_pure=True, pack=4)
        return v0.to(tl.float8e5, bitcast=True), v1.to(tl.float8e5, bitcast=True)
    # Word bytes (4c + 2h + q): q = 0 holds values (0, 1) / (2, 3), q = 1 (4, 5) / (6, 7).
    b0, b1 = tl.split(tl.reshape(w, (ROWS, 16, 2, 2)))
    return _nibbles_e5m2(b0, ROWS), _nibbles_e5m2(b1, ROWS)


@triton.jit
def _w4a8_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, sorted_ptr, block_expert_ptr,
                      topk_w_ptr, N, K, num_pairs, a_row_div,
                      stride_am, stride_asm, stride_we, stride_wn, stride_wse, stride_wsn,
                      stride_wsk, stride_cm,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP_AB: tl.constexpr,
                      STATIC_A: tl.constexpr, MUL_WEIGHT: tl.constexpr, ASM: tl.constexpr):
    # Axis 0: a block of BLOCK_M sorted rows (one expert); axis 1: a BLOCK_N slice of N.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    pair = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pair < num_pairs
    a_row = (pair // a_row_div).to(tl.int64)  # gate/up reads the token, down reads the pair
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    j = tl.arange(0, 64)
    col = (j // 4) * 8 + j % 4  # activation column of position j of v0 (v1: col + 4)
    e64 = expert.to(tl.int64)
    w_p = w_ptr + e64 * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn + j[None, :]
    a_p = a_ptr + a_row[:, None] * stride_am + col[None, :]
    ws_p = ws_ptr + e64 * stride_wse + offs_n * stride_wsn
    as_p = as_ptr + a_row * stride_asm
    if SWAP_AB:  # tokens on the MMA's N side: a 64-row MMA tile even for a 16-row block
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The scales are loaded one group ahead by hand: the pipeliner leaves these small
    # strided loads synchronous, and their latency would stall every K step. (The last
    # step reloads its own group instead of reading past the row.)
    n_groups = K // 128
    w_s = tl.load(ws_p, mask=n_ok, other=0.0)
    a_s = tl.load(as_p, mask=row_ok, other=0.0)
    for kb in range(0, n_groups):
        nxt = tl.minimum(kb + 1, n_groups - 1)
        w_s_next = tl.load(ws_p + nxt * stride_wsk, mask=n_ok, other=0.0)
        if not STATIC_A:
            a_s_next = tl.load(as_p + nxt, mask=row_ok, other=0.0)
        w = tl.load(w_p, mask=n_ok[:, None], other=0)
        w0, w1 = int4_to_fp8(w, BLOCK_N, ASM)
        a0 = tl.load(a_p, mask=row_ok[:, None], other=0.0)
        a1 = tl.load(a_p + 4, mask=row_ok[:, None], other=0.0)
        if SWAP_AB:
            p = tl.dot(w0, tl.trans(a0))
            p = tl.dot(w1, tl.trans(a1), p)
            p = p * w_s[:, None]
            if not STATIC_A:
                p = p * a_s[None, :]
        else:
            p = tl.dot(a0, tl.trans(w0))
            p = tl.dot(a1, tl.trans(w1), p)
            p = p * w_s[None, :]
            if not STATIC_A:
                p = p * a_s[:, None]
        acc += p
        w_p += 64
        a_p += 128
        w_s = w_s_next
        if not STATIC_A:
            a_s = a_s_next
    if SWAP_AB:
        acc = tl.trans(acc)
    if STATIC_A:
        acc *= tl.load(as_ptr)
    if MUL_WEIGHT:
        acc *= tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@dataclass(frozen=True)
class TileConfig:
    """One launch shape of the W4A8 grouped GEMM (BLOCK_M comes from the align)."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 4
    swap_ab: bool = False

    def __str__(self) -> str:
        return (f"n{self.block_n} w{self.num_warps} s{self.num_stages}"
                f"{' swap' if self.swap_ab else ''}")


def w4a8_grouped_gemm_nt(a, a_s, w, w_s, sorted_ids, block_expert, num_pairs: int,
                         a_row_div: int, topk_weights=None, block_m: int = 16,
                         tile: TileConfig = TileConfig(), out_dtype=torch.bfloat16):
    """out[p] = dequant(a[p // a_row_div]) @ dequant(w[expert(p)]).T (* topk_weights[p]).

    Args:
        a: (rows, K) fp8. a_s: (rows, K/128) fp32 (dynamic) or a 0-d / one-element 1-d
            fp32 tensor (static, per tensor).
        w: (E, N, K/2) int8 packed int4 in int4_format's kernel layout; w_s: (E, N, K/128)
            fp32, any strides.
        sorted_ids, block_expert: from fp8_moe.moe_align with the same block_m.
        num_pairs: M*k; out has one row per (token, slot) pair.
        a_row_div: k to read token rows (gate/up), 1 to read pair rows (down).
        topk_weights: (M*k,) fp32 multiplied into each row, or None.
    Returns:
        (num_pairs, N) out_dtype.
    """
    e, n, kp = w.shape
    k = 2 * kp
    if w.dtype != torch.int8 or k % GROUP or tuple(w_s.shape) != (e, n, k // GROUP):
        raise ValueError(f"w4a8_grouped_gemm_nt: w {tuple(w.shape)} {w.dtype} with scales "
                         f"{tuple(w_s.shape)}: want int8 (E, N, K/2), K a multiple of {GROUP}, "
                         f"scales (E, N, K/{GROUP})")
    static = a_s.dim() <= 1
    scales_ok = a_s.numel() == 1 if static else tuple(a_s.shape) == (a.shape[0], k // GROUP)
    if a.dtype != FP8 or a.shape[1] != k or a.stride(1) != 1 or not scales_ok:
        raise ValueError(f"w4a8_grouped_gemm_nt: a {tuple(a.shape)} {a.dtype}, a_s "
                         f"{tuple(a_s.shape)} vs K={k}")
    out = torch.empty(num_pairs, n, dtype=out_dtype, device=a.device)
    if num_pairs == 0:
        return out
    grid = (block_expert.numel(), ceil_div(n, tile.block_n))
    weights = topk_weights if topk_weights is not None else a_s  # unread when not multiplied
    _w4a8_gemm_kernel[grid](
        a, a_s, w, w_s, out, sorted_ids, block_expert, weights, n, k, num_pairs, a_row_div,
        a.stride(0), 0 if static else a_s.stride(0), w.stride(0), w.stride(1),
        w_s.stride(0), w_s.stride(1), w_s.stride(2), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=tile.block_n, SWAP_AB=tile.swap_ab, STATIC_A=static,
        MUL_WEIGHT=topk_weights is not None, ASM=isinstance(_w4a8_gemm_kernel, JITFunction),
        num_warps=tile.num_warps, num_stages=tile.num_stages)
    return out


@triton.jit
def _static_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, K,
                         SILU_MUL: tl.constexpr, BLOCK: tl.constexpr):
    # q = e4m3(x / s) with one fp32 scale for the tensor; SILU_MUL: x = silu(gate) * up.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    x = x_ptr + row * x_stride + offs
    v = tl.load(x, mask=mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        u = tl.load(x + K, mask=mask, other=0.0).to(tl.float32)
        v = v / (1.0 + tl.exp(-v)) * u
    q = tl.math.div_rn(v, tl.load(s_ptr))
    q = round_e4m3(tl.minimum(tl.maximum(q, -_MAX), _MAX))
    tl.store(q_ptr + row * q_stride + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def fp8_static_quant(x: torch.Tensor, scale: torch.Tensor, silu_mul: bool = False):
    """x (M, K) -> e4m3(x / scale) (M, K), one fp32 scale (one-element tensor) for all.

    silu_mul: x is (M, 2I) gate then up, and silu(gate) * up (M, I) is quantized. Values
    past ±448 saturate (a static scale is calibrated, not measured on this batch).
    """
    if x.dim() != 2 or x.stride(1) != 1 or scale.numel() != 1:
        raise ValueError(f"fp8_static_quant: x {tuple(x.shape)} strides {x.stride()}, scale "
                         f"{tuple(scale.shape)}: want 2-D x with unit last stride, 1 scale")
    k = x.shape[1] // 2 if silu_mul else x.shape[1]
    q = torch.empty(x.shape[0], k, dtype=FP8, device=x.device)
    if q.numel():
        _static_quant_kernel[(x.shape[0], ceil_div(k, 1024))](
            x, x.stride(0), q, q.stride(0), scale, k, SILU_MUL=silu_mul, BLOCK=1024)
    return q


@dataclass(frozen=True)
class MoETiles:
    """Tiles of the two GEMMs of one call (gate+up, down)."""

    gate_up: TileConfig = TileConfig()
    down: TileConfig = TileConfig()


def w4a8_tiles(num_pairs: int, num_experts: int) -> MoETiles:
    """Tiles by rows per expert block (fp8_moe.moe_block_m). Small blocks swap A and B so
    the weight rows fill the 64-row wgmma tile (with 16 token rows Triton would otherwise
    fall back to mma.sync through fp16); 64-row blocks use the plain orientation.
    Not yet tuned on the H200: benchmarks/bench_w4a8_moe.py --quick compares the variants."""
    if moe_block_m(num_pairs, num_experts) < 64:
        tile = TileConfig(block_n=64, swap_ab=True)
    else:
        tile = TileConfig(block_n=128, num_warps=8)
    return MoETiles(tile, tile)


def w4a8_fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                   w13: torch.Tensor, w13_s: torch.Tensor, w2: torch.Tensor,
                   w2_s: torch.Tensor, a13_scale: torch.Tensor | None = None,
                   a2_scale: torch.Tensor | None = None,
                   tiles: MoETiles | None = None) -> torch.Tensor:
    """Routed experts of one MoE layer on int4 weights with FP8 activations.

    Args:
        x: (M, H) bf16 hidden states.
        topk_weights: (M, k) float routing weights; topk_ids: (M, k) int expert ids.
        w13: (E, 2I, H/2) int8 packed int4 (kernel layout: int4_format.to_kernel_layout),
            gate rows [0, I) then up rows [I, 2I); w13_s (E, 2I, H/128) fp32.
        w2: (E, H, I/2) int8; w2_s (E, H, I/128) fp32.
        a13_scale, a2_scale: static activation scales (one fp32 each) for the gate/up input
            and the down input, both or neither; neither: dynamic per-token groups of 128.
    Returns:
        (M, H) x.dtype: sum_j topk_weights[:, j] * expert_j(x).
    """
    m, h = x.shape
    top_k = topk_ids.shape[1]
    e = w13.shape[0]
    if (w2.shape[0] != e or w2.shape[1] != h or 2 * w13.shape[2] != h
            or w13.shape[1] != 4 * w2.shape[2]):
        raise ValueError(f"w4a8_fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} "
                         f"(packed int4) do not fit hidden {h}")
    if (a13_scale is None) != (a2_scale is None):
        raise ValueError("w4a8_fused_moe: pass both static activation scales or neither")
    pairs = m * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    tiles = tiles or w4a8_tiles(pairs, e)
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(topk_ids, e, bm)
    if a13_scale is None:
        xq, xs = fp8_act_quant(x)
    else:
        xq, xs = fp8_static_quant(x, a13_scale), a13_scale
    gate_up = w4a8_grouped_gemm_nt(xq, xs, w13, w13_s, sorted_ids, block_expert, pairs, top_k,
                                   block_m=bm, tile=tiles.gate_up)
    if a2_scale is None:
        aq, as_ = fp8_silu_mul_quant(gate_up)
    else:
        aq, as_ = fp8_static_quant(gate_up, a2_scale, silu_mul=True), a2_scale
    y = w4a8_grouped_gemm_nt(aq, as_, w2, w2_s, sorted_ids, block_expert, pairs, 1,
                             topk_weights=topk_weights.reshape(-1).float(), block_m=bm,
                             tile=tiles.down)
    # Rows are already weighted: the combine sums each token's k rows (torch accumulates
    # a bf16 sum in fp32 and rounds once).
    return y.view(m, top_k, h).sum(dim=1).to(x.dtype)
