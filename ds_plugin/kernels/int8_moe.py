"""Fused MoE over INT8 experts, the FP8 MoE's structure: align (fp8_moe's `moe_align`),
grouped int8 GEMM (gate+up), SiLU*mul+int8 quant, grouped int8 GEMM (down, routing weight
applied), combine.

Both int8_format layouts: per-channel experts (`w8a8_int8`: activations per token) and
128x128 block experts (`blockwise_int8`: activations per token per 128 channels). Shapes are
static in the batch size (moe_align's bounded padding), so the path is CUDA-graph capturable.
`ref_int8.ref_int8_fused_moe` is the fp32 twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_moe import moe_align, moe_block_m
from ds_plugin.kernels.int8_format import BLOCK, PER_GROUP, PER_TOKEN, ceil_div
from ds_plugin.kernels.int8_quant import int8_act_quant, int8_silu_mul_quant


@triton.jit
def _int8_grouped_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, sorted_ptr, block_expert_ptr,
                              topk_w_ptr, N, K, num_pairs, a_row_div,
                              stride_am, stride_asm, stride_we, stride_wn, stride_wse,
                              stride_wsn, stride_cm,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_K: tl.constexpr, MUL_WEIGHT: tl.constexpr,
                              BLOCKWISE: tl.constexpr):
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
    offs_k = tl.arange(0, BLOCK_K)
    e64 = expert.to(tl.int64)
    a_rows = a_ptr + a_row[:, None] * stride_am
    w_rows = w_ptr + e64 * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    as_rows = as_ptr + a_row * stride_asm
    if BLOCKWISE:
        ws_rows = ws_ptr + e64 * stride_wse + (offs_n // BLOCK_K) * stride_wsn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            k = kb * BLOCK_K + offs_k
            k_ok = k < K
            a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            a_s = tl.load(as_rows + kb, mask=row_ok, other=0.0)
            w_s = tl.load(ws_rows + kb, mask=n_ok, other=0.0)
            part = tl.dot(a, tl.trans(w), out_dtype=tl.int32)
            acc += part.to(tl.float32) * a_s[:, None] * w_s[None, :]
    else:
        iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kb in range(0, tl.cdiv(K, BLOCK_K)):
            k = kb * BLOCK_K + offs_k
            k_ok = k < K
            a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0)
            w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            iacc = tl.dot(a, tl.trans(w), iacc, out_dtype=tl.int32)
        a_s = tl.load(as_rows, mask=row_ok, other=0.0)
        w_s = tl.load(ws_ptr + e64 * stride_wse + offs_n * stride_wsn, mask=n_ok, other=0.0)
        acc = iacc.to(tl.float32) * a_s[:, None] * w_s[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _blockwise(w: torch.Tensor, w_s: torch.Tensor, name: str) -> bool:
    e, n, k = w.shape
    if tuple(w_s.shape) == (e, n, 1):
        return False
    if tuple(w_s.shape) == (e, ceil_div(n, BLOCK), ceil_div(k, BLOCK)):
        return True
    raise ValueError(f"{name}: scales {tuple(w_s.shape)} fit neither per-channel ({(e, n, 1)}) "
                     f"nor 128x128 block ({(e, ceil_div(n, BLOCK), ceil_div(k, BLOCK))}) "
                     f"layout of weight {tuple(w.shape)}")


def int8_grouped_gemm_nt(a, a_s, w, w_s, sorted_ids, block_expert, num_pairs: int,
                         a_row_div: int, topk_weights=None, block_m: int = 16,
                         block_n: int = 64, num_warps: int = 4, num_stages: int = 4,
                         out_dtype=torch.bfloat16) -> torch.Tensor:
    """out[p] = dequant(a[p // a_row_div]) @ dequant(w[expert(p)]).T (* topk_weights[p]).

    Args:
        a: (rows, K) int8 with a_s (rows, 1) per token (per-channel w) or (rows, ceil(K/128))
            per token group (block w).
        w: (E, N, K) int8 with w_s (E, N, 1) or (E, ceil(N/128), ceil(K/128)) fp32.
        sorted_ids, block_expert: from moe_align with the same block_m.
        num_pairs: M*k; out has one row per (token, slot) pair.
        a_row_div: k to read token rows (gate/up), 1 to read pair rows (down).
        topk_weights: (M*k,) fp32 multiplied into each row, or None.
    Returns:
        (num_pairs, N) out_dtype.
    """
    e, n, k = w.shape
    blockwise = _blockwise(w, w_s, "int8_grouped_gemm_nt")
    want_as = (a.shape[0], ceil_div(k, BLOCK) if blockwise else 1)
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.shape[1] != k \
            or tuple(a_s.shape) != want_as:
        raise ValueError(f"int8_grouped_gemm_nt: a {tuple(a.shape)} {a.dtype} with scales "
                         f"{tuple(a_s.shape)} (want {want_as}) vs w {tuple(w.shape)} {w.dtype}")
    out = torch.empty(num_pairs, n, dtype=out_dtype, device=a.device)
    if num_pairs == 0:
        return out
    grid = (block_expert.numel(), ceil_div(n, block_n))
    weights = topk_weights if topk_weights is not None else a_s  # unread when not multiplied
    _int8_grouped_gemm_kernel[grid](
        a, a_s, w, w_s, out, sorted_ids, block_expert, weights, n, k, num_pairs, a_row_div,
        a.stride(0), a_s.stride(0), w.stride(0), w.stride(1), w_s.stride(0), w_s.stride(1),
        out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK, MUL_WEIGHT=topk_weights is not None,
        BLOCKWISE=blockwise, num_warps=num_warps, num_stages=num_stages)
    return out


def int8_fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                   w13: torch.Tensor, w13_s: torch.Tensor, w2: torch.Tensor,
                   w2_s: torch.Tensor) -> torch.Tensor:
    """Routed experts of one MoE layer on INT8 weights (either int8_format layout).

    Args:
        x: (M, H) bf16 hidden states.
        topk_weights: (M, k) float routing weights; topk_ids: (M, k) int expert ids.
        w13: (E, 2I, H) int8, gate rows [0, I) then up rows [I, 2I), with w13_s (E, 2I, 1)
            or (E, 2I/128, H/128).
        w2: (E, H, I) int8 with w2_s in the same layout as w13_s.
    Returns:
        (M, H) x.dtype: sum_j topk_weights[:, j] * expert_j(x).
    """
    m, h = x.shape
    top_k = topk_ids.shape[1]
    e = w13.shape[0]
    if w2.shape[0] != e or w2.shape[1] != h or w13.shape[2] != h or w13.shape[1] != 2 * w2.shape[2]:
        raise ValueError(f"int8_fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do "
                         f"not fit hidden {h}")
    blockwise = _blockwise(w13, w13_s, "int8_fused_moe w13")
    if _blockwise(w2, w2_s, "int8_fused_moe w2") != blockwise:
        raise ValueError("int8_fused_moe: w13 and w2 scales must use the same layout")
    pairs = m * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    gran = PER_GROUP if blockwise else PER_TOKEN
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(topk_ids, e, bm)
    xq, xs = int8_act_quant(x, gran)
    gate_up = int8_grouped_gemm_nt(xq, xs, w13, w13_s, sorted_ids, block_expert, pairs, top_k,
                                   block_m=bm)
    aq, as_ = int8_silu_mul_quant(gate_up, gran)
    y = int8_grouped_gemm_nt(aq, as_, w2, w2_s, sorted_ids, block_expert, pairs, 1,
                             topk_weights=topk_weights.reshape(-1).float(), block_m=bm)
    # Rows are already weighted: sum each token's k rows in fp32, round once.
    return y.view(m, top_k, h).sum(dim=1, dtype=torch.float32).to(x.dtype)
