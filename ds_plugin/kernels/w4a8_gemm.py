"""The W4A8 grouped GEMM (int4 expert weights x FP8 activations) and its static quantizer.

Each 128-wide K group of a weight row is 64 bytes of packed int4 (int4_format's kernel
layout); a program loads them, expands every nibble to its exact FP8 (e5m2) code in
registers, and feeds FP8 MMAs against the e4m3 activations, scaling each group's partial
product by its weight scale before adding it up in fp32.

A 32-bit word of the kernel layout (8 consecutive K values) expands with four masks into
fp16 pairs (the 0x6400 exponent trick: 1024 + u, then one fp16 add or fma), whose high
bytes are exactly the values' e5m2 codes; two byte permutes (`prmt`) gather them into two
words, K values 0-3 and 4-7. e5m2 x e4m3 is a native Hopper FP8 MMA, and int4 values are
exact in e5m2. So the activations are consumed in that order too: position j of the first
MMA operand is column 8(j//4) + j%4 of the group, of the second that plus 4. They are read
either from the natural layout (4-byte runs) or from the "permuted" one (`act_perm`: each
group stored as those two 64-byte halves, so each is one contiguous 16-byte-vector load),
which our static quantizer and the fused gate/up epilogue write directly.

Knobs (TileConfig): BLOCK_N weight rows per program, warps, pipeline stages, swap-AB (the
weight rows on the MMA's M side, for small token blocks), and `groups`, the 128-K groups
one loop iteration handles (2: each weight row gives 128 contiguous bytes per iteration
and the loop's fixed cost is paid once per 256 K values). The fused gate/up mode computes
a gate row block and its up row block in one program and writes silu(gate) * up already
quantized with the static scale (the unfused path's bf16 round trip and kernel skipped).
Under the Triton interpreter (CPU tests) the expansion is the shift-and-cast one.
`ref_w4a8` holds the fp32 twins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8, ceil_div, round_e4m3
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
def _perm_col(n):
    # Natural column n -> its position in the permuted activation layout (see act_perm).
    return (n // 128) * 128 + ((n % 8) // 4) * 64 + ((n % 128) // 8) * 4 + n % 4


@triton.jit
def _scales(ws_p, as_p, g, stride_wsk, n_ok, row_ok, BLOCK_M: tl.constexpr,
            EVEN_N: tl.constexpr, STATIC_A: tl.constexpr):
    # Weight scales (BLOCK_N,) and dynamic activation scales (BLOCK_M,) of K group g.
    if EVEN_N:
        w_s = tl.load(ws_p + g * stride_wsk)
    else:
        w_s = tl.load(ws_p + g * stride_wsk, mask=n_ok, other=0.0)
    if STATIC_A:
        a_s = tl.zeros((BLOCK_M,), dtype=tl.float32)  # unused
    else:
        a_s = tl.load(as_p + g, mask=row_ok, other=0.0)
    return w_s, a_s


@triton.jit
def _group_product(w_p, n_ok, a0, a1, w_s, a_s, BLOCK_N: tl.constexpr, SWAP_AB: tl.constexpr,
                   EVEN_N: tl.constexpr, STATIC_A: tl.constexpr, ASM: tl.constexpr):
    # One K group of one weight row block: expand, two MMAs, scale.
    if EVEN_N:
        w = tl.load(w_p)
    else:
        w = tl.load(w_p, mask=n_ok[:, None], other=0)
    w0, w1 = int4_to_fp8(w, BLOCK_N, ASM)
    if SWAP_AB:  # tokens on the MMA's N side: a 64-row MMA tile even for a 16-row block
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
    return p


@triton.jit
def _w4a8_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, sorted_ptr, block_expert_ptr,
                      topk_w_ptr, qs_ptr, N, K, num_pairs, a_row_div,
                      stride_am, stride_asm, stride_we, stride_wn, stride_wse, stride_wsn,
                      stride_wsk, stride_cm,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP_AB: tl.constexpr,
                      STATIC_A: tl.constexpr, MUL_WEIGHT: tl.constexpr, ASM: tl.constexpr,
                      GROUPS: tl.constexpr, EVEN_N: tl.constexpr, A_PERM: tl.constexpr,
                      FUSE: tl.constexpr, TILED: tl.constexpr):
    # Axis 0: a block of BLOCK_M sorted rows (one expert); axis 1: a BLOCK_N slice of N.
    # FUSE: weight rows [n, n + BLOCK_N) are gate rows, [N + n, ...) their up rows, and the
    # output is e4m3(silu(gate) * up / qs) (permuted when A_PERM, as the down GEMM reads it).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    pair = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pair < num_pairs
    # gate/up reads the token, down reads the pair; padding rows read row 0 (finite, and
    # their outputs are never stored), so the activation loads need no mask
    a_row = tl.where(row_ok, pair // a_row_div, 0).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    j = tl.arange(0, 64)
    if A_PERM:
        col0 = j
        col1 = j + 64
    else:
        col0 = (j // 4) * 8 + j % 4  # activation column of position j of v0 (v1: col + 4)
        col1 = col0 + 4
    e64 = expert.to(tl.int64)
    if TILED:  # int4_format.to_tiles: 64-row x 64-byte tiles, K-major within a row block
        n64 = offs_n.to(tl.int64)
        w_row = (n64 // 64) * (64 * stride_wn) + (n64 % 64) * 64
        w_step = 4096
    else:
        w_row = offs_n.to(tl.int64) * stride_wn
        w_step = 64
    w_p = w_ptr + e64 * stride_we + w_row[:, None] + j[None, :]
    a_p = a_ptr + a_row[:, None] * stride_am
    ws_p = ws_ptr + e64 * stride_wse + offs_n * stride_wsn
    as_p = as_ptr + a_row * stride_asm
    up_w = N * stride_wn  # FUSE: the up rows, N rows further (in both layouts)
    up_s = N * stride_wsn
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = acc
    # The scales are loaded one iteration ahead by hand: the pipeliner leaves these small
    # strided loads synchronous, and their latency would stall every K step. (The last
    # iteration reloads its own instead of reading past the row.)
    n_it = K // (128 * GROUPS)
    ws0, as0 = _scales(ws_p, as_p, 0, stride_wsk, n_ok, row_ok, BLOCK_M, EVEN_N, STATIC_A)
    ws1, as1 = ws0, as0
    wu0, wu1 = ws0, ws0
    if GROUPS == 2:
        ws1, as1 = _scales(ws_p, as_p, 1, stride_wsk, n_ok, row_ok, BLOCK_M, EVEN_N, STATIC_A)
    if FUSE:
        wu0, _ = _scales(ws_p + up_s, as_p, 0, stride_wsk, n_ok, row_ok, BLOCK_M, EVEN_N, True)
        wu1 = wu0
        if GROUPS == 2:
            wu1, _ = _scales(ws_p + up_s, as_p, 1, stride_wsk, n_ok, row_ok, BLOCK_M, EVEN_N,
                             True)
    for it in range(0, n_it):
        nxt = tl.minimum(it + 1, n_it - 1) * GROUPS
        ws0_n, as0_n = _scales(ws_p, as_p, nxt, stride_wsk, n_ok, row_ok, BLOCK_M, EVEN_N,
                               STATIC_A)
        if GROUPS == 2:
            ws1_n, as1_n = _scales(ws_p, as_p, nxt + 1, stride_wsk, n_ok, row_ok, BLOCK_M,
                                   EVEN_N, STATIC_A)
        if FUSE:
            wu0_n, _ = _scales(ws_p + up_s, as_p, nxt, stride_wsk, n_ok, row_ok, BLOCK_M,
                               EVEN_N, True)
            if GROUPS == 2:
                wu1_n, _ = _scales(ws_p + up_s, as_p, nxt + 1, stride_wsk, n_ok, row_ok,
                                   BLOCK_M, EVEN_N, True)
        for g in tl.static_range(GROUPS):
            if g == 0:
                w_s, a_s, w_su = ws0, as0, wu0
            else:
                w_s, a_s, w_su = ws1, as1, wu1
            a0 = tl.load(a_p + (g * 128 + col0)[None, :])
            a1 = tl.load(a_p + (g * 128 + col1)[None, :])
            acc += _group_product(w_p + g * w_step, n_ok, a0, a1, w_s, a_s, BLOCK_N, SWAP_AB,
                                  EVEN_N, STATIC_A, ASM)
            if FUSE:
                acc_u += _group_product(w_p + up_w + g * w_step, n_ok, a0, a1, w_su, a_s, BLOCK_N,
                                        SWAP_AB, EVEN_N, STATIC_A, ASM)
        w_p += w_step * GROUPS
        a_p += 128 * GROUPS
        ws0, as0 = ws0_n, as0_n
        if GROUPS == 2:
            ws1, as1 = ws1_n, as1_n
        if FUSE:
            wu0 = wu0_n
            if GROUPS == 2:
                wu1 = wu1_n
    if SWAP_AB:
        acc = tl.trans(acc)
        if FUSE:
            acc_u = tl.trans(acc_u)
    if STATIC_A:
        acc *= tl.load(as_ptr)
        if FUSE:
            acc_u *= tl.load(as_ptr)
    mask = row_ok[:, None] & n_ok[None, :]
    if FUSE:
        # The unfused path's arithmetic exactly: gate/up rounded to bf16, silu in fp32.
        gate = acc.to(tl.bfloat16).to(tl.float32)
        up = acc_u.to(tl.bfloat16).to(tl.float32)
        h = gate / (1.0 + tl.exp(-gate)) * up
        q = tl.math.div_rn(h, tl.load(qs_ptr))
        q = round_e4m3(tl.minimum(tl.maximum(q, -_MAX), _MAX))
        if A_PERM:
            col = _perm_col(offs_n)
        else:
            col = offs_n
        c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + col[None, :]
        tl.store(c, q.to(c_ptr.dtype.element_ty), mask=mask)
    else:
        if MUL_WEIGHT:
            acc *= tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
        c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class TileConfig:
    """One launch shape of the W4A8 grouped GEMM (BLOCK_M comes from the align)."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 4
    swap_ab: bool = False
    groups: int = 1  # 128-K groups per loop iteration: 1 or 2
    tiled: bool = False  # weights in int4_format.to_tiles' layout (block_n a multiple of 64)

    def __post_init__(self):
        if self.groups not in (1, 2):
            raise ValueError(f"TileConfig.groups must be 1 or 2, got {self.groups}")
        if self.tiled and self.block_n % 64:
            raise ValueError(f"TileConfig: tiled weights need block_n % 64 == 0, got "
                             f"{self.block_n}")

    def __str__(self) -> str:
        return (f"n{self.block_n} w{self.num_warps} s{self.num_stages}"
                f"{' swap' if self.swap_ab else ''}{' g2' if self.groups == 2 else ''}"
                f"{' tiled' if self.tiled else ''}")


def _check_weights(name, w, w_s):
    e, n, kp = w.shape
    k = 2 * kp
    if w.dtype != torch.int8 or k % GROUP or tuple(w_s.shape) != (e, n, k // GROUP):
        raise ValueError(f"{name}: w {tuple(w.shape)} {w.dtype} with scales "
                         f"{tuple(w_s.shape)}: want int8 (E, N, K/2), K a multiple of {GROUP}, "
                         f"scales (E, N, K/{GROUP})")
    return e, n, k


def _launch(a, a_s, w, w_s, out, sorted_ids, block_expert, num_pairs, a_row_div, weights,
            qs, n, k, block_m, tile, a_perm, fuse):
    static = a_s.dim() <= 1
    scales_ok = a_s.numel() == 1 if static else tuple(a_s.shape) == (a.shape[0], k // GROUP)
    if a.dtype != FP8 or a.shape[1] != k or a.stride(1) != 1 or not scales_ok:
        raise ValueError(f"w4a8 grouped GEMM: a {tuple(a.shape)} {a.dtype}, a_s "
                         f"{tuple(a_s.shape)} vs K={k}")
    if tile.tiled and n % 64:
        raise ValueError(f"w4a8 grouped GEMM: tiled weights need N % 64 == 0, got N={n}")
    # An odd number of K groups (toy sizes) runs one group per iteration.
    groups = tile.groups if (k // GROUP) % tile.groups == 0 else 1
    grid = (block_expert.numel(), ceil_div(n, tile.block_n))
    _w4a8_gemm_kernel[grid](
        a, a_s, w, w_s, out, sorted_ids, block_expert, weights, qs, n, k, num_pairs,
        a_row_div, a.stride(0), 0 if static else a_s.stride(0), w.stride(0), w.stride(1),
        w_s.stride(0), w_s.stride(1), w_s.stride(2), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=tile.block_n, SWAP_AB=tile.swap_ab, STATIC_A=static,
        MUL_WEIGHT=weights is not a_s, ASM=isinstance(_w4a8_gemm_kernel, JITFunction),
        GROUPS=groups, EVEN_N=n % tile.block_n == 0, A_PERM=a_perm, FUSE=fuse,
        TILED=tile.tiled,
        num_warps=tile.num_warps, num_stages=tile.num_stages)


def w4a8_grouped_gemm_nt(a, a_s, w, w_s, sorted_ids, block_expert, num_pairs: int,
                         a_row_div: int, topk_weights=None, block_m: int = 16,
                         tile: TileConfig = TileConfig(), out_dtype=torch.bfloat16,
                         a_perm: bool = False):
    """out[p] = dequant(a[p // a_row_div]) @ dequant(w[expert(p)]).T (* topk_weights[p]).

    Args:
        a: (rows, K) fp8, natural column order or (a_perm) act_perm's. a_s: (rows, K/128)
            fp32 (dynamic) or a 0-d / one-element 1-d fp32 tensor (static, per tensor).
        w: (E, N, K/2) int8 packed int4 in int4_format's kernel layout, and in its tiled
            one (to_tiles) when tile.tiled; w_s: (E, N, K/128) fp32, any strides.
        sorted_ids, block_expert: from fp8_moe.moe_align with the same block_m.
        num_pairs: M*k; out has one row per (token, slot) pair.
        a_row_div: k to read token rows (gate/up), 1 to read pair rows (down).
        topk_weights: (M*k,) fp32 multiplied into each row, or None.
    Returns:
        (num_pairs, N) out_dtype.
    """
    _, n, k = _check_weights("w4a8_grouped_gemm_nt", w, w_s)
    out = torch.empty(num_pairs, n, dtype=out_dtype, device=a.device)
    if num_pairs:
        weights = topk_weights if topk_weights is not None else a_s  # a_s: not multiplied
        _launch(a, a_s, w, w_s, out, sorted_ids, block_expert, num_pairs, a_row_div, weights,
                a_s, n, k, block_m, tile, a_perm, fuse=False)
    return out


def w4a8_gate_up_silu_quant(a, a_s, w13, w13_s, out_scale, sorted_ids, block_expert,
                            num_pairs: int, a_row_div: int, block_m: int = 16,
                            tile: TileConfig = TileConfig(), a_perm: bool = False):
    """The gate/up GEMM with SiLU*mul and the static FP8 quantization in its epilogue:
    out[p] = e4m3(silu(g) * u / out_scale), g and u the bf16-rounded gate and up rows of
    w4a8_grouped_gemm_nt (static a_s only). w13 (E, 2I, K/2) gate rows then up rows.
    a_perm: a is in act_perm's layout, and so is the (num_pairs, I) fp8 output."""
    _, n2, k = _check_weights("w4a8_gate_up_silu_quant", w13, w13_s)
    if a_s.dim() > 1 or out_scale.numel() != 1 or n2 % 2:
        raise ValueError(f"w4a8_gate_up_silu_quant: static scales only (a_s "
                         f"{tuple(a_s.shape)}, out_scale {tuple(out_scale.shape)}), 2I={n2}")
    out = torch.empty(num_pairs, n2 // 2, dtype=FP8, device=a.device)
    if num_pairs:
        _launch(a, a_s, w13, w13_s, out, sorted_ids, block_expert, num_pairs, a_row_div, a_s,
                out_scale, n2 // 2, k, block_m, tile, a_perm, fuse=True)
    return out


@triton.jit
def _static_quant_kernel(x_ptr, x_stride, q_ptr, q_stride, s_ptr, K,
                         SILU_MUL: tl.constexpr, PERM: tl.constexpr, BLOCK: tl.constexpr):
    # q = e4m3(x / s) with one fp32 scale for the tensor; SILU_MUL: x = silu(gate) * up.
    # PERM: output position o holds input column _perm_col^-1(o) (a gather, so the store
    # stays contiguous).
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < K
    if PERM:
        src = (offs // 128) * 128 + ((offs % 64) // 4) * 8 + ((offs % 128) // 64) * 4 + offs % 4
    else:
        src = offs
    x = x_ptr + row * x_stride + src
    v = tl.load(x, mask=mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        u = tl.load(x + K, mask=mask, other=0.0).to(tl.float32)
        v = v / (1.0 + tl.exp(-v)) * u
    q = tl.math.div_rn(v, tl.load(s_ptr))
    q = round_e4m3(tl.minimum(tl.maximum(q, -_MAX), _MAX))
    tl.store(q_ptr + row * q_stride + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def fp8_static_quant(x: torch.Tensor, scale: torch.Tensor, silu_mul: bool = False,
                     permute: bool = False):
    """x (M, K) -> e4m3(x / scale) (M, K), one fp32 scale (one-element tensor) for all.

    silu_mul: x is (M, 2I) gate then up, and silu(gate) * up (M, I) is quantized. Values
    past ±448 saturate (a static scale is calibrated, not measured on this batch).
    permute: the columns come out in act_perm's order (K a multiple of 128).
    """
    if x.dim() != 2 or x.stride(1) != 1 or scale.numel() != 1:
        raise ValueError(f"fp8_static_quant: x {tuple(x.shape)} strides {x.stride()}, scale "
                         f"{tuple(scale.shape)}: want 2-D x with unit last stride, 1 scale")
    k = x.shape[1] // 2 if silu_mul else x.shape[1]
    if permute and k % GROUP:
        raise ValueError(f"fp8_static_quant: permute needs K a multiple of {GROUP}, got {k}")
    q = torch.empty(x.shape[0], k, dtype=FP8, device=x.device)
    if q.numel():
        _static_quant_kernel[(x.shape[0], ceil_div(k, 1024))](
            x, x.stride(0), q, q.stride(0), scale, k, SILU_MUL=silu_mul, PERM=permute,
            BLOCK=1024)
    return q


def act_perm(k: int, device=None) -> torch.Tensor:
    """Index map of the permuted activation layout: permuted[:, o] = natural[:, act_perm[o]].
    Within each 128-column group, positions 4c + r hold columns 8c + r and positions
    64 + 4c + r columns 8c + 4 + r (c < 16, r < 4): the two MMA operands' K orders."""
    o = torch.arange(k, device=device)
    return (o // 128) * 128 + ((o % 64) // 4) * 8 + ((o % 128) // 64) * 4 + o % 4
