"""Fused MoE over block-FP8 experts: align, grouped GEMM (gate+up), SiLU*mul+quant,
grouped GEMM (down, routing weight applied), combine.

The (token, expert) pairs are sorted by expert and each expert's run is padded to a
multiple of BLOCK_M, so every GEMM program works on rows of one expert. All shapes are
static in the batch size (the padded length is bounded, not counted), so the whole path
is CUDA-graph capturable. `ref_fp8.ref_fused_moe` is the fp32 twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_moe_prefill import (PrefillConfig, moe_align_chunked,
                                               prefill_experts, prefill_supported)
from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_silu_mul_quant
from ds_plugin.kernels.fp8_format import BLOCK, FP8, ceil_div
from ds_plugin.kernels.fp8_moe_prefill import moe_align_capacity

# One program aligns up to this many (token, slot) pairs (512 tokens at top-8): decode,
# where a launch more would cost as much as the experts' weight read. Larger batches use
# the chunked align (three launches, any size).
MAX_ALIGN_PAIRS = 4096
# The prefill path (fp8_moe_prefill) from this many pairs on, when the average expert
# sees at least PREFILL_MIN_ROWS_PER_EXPERT rows (its tiles are 128 rows of one expert).
PREFILL_FROM_PAIRS = 4096
PREFILL_MIN_ROWS_PER_EXPERT = 32


@triton.jit
def _align_kernel(ids_ptr, sorted_ptr, block_expert_ptr, counts_ptr, shift_ptr, P, E, cap,
                  BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr, BM: tl.constexpr,
                  BLOCK_F: tl.constexpr):
    # A single program: histogram, prefix sums, a stable sort and two scatters, with
    # barriers between the phases that hand data through the scratch buffers.
    offs = tl.arange(0, BLOCK_P)
    valid = offs < P
    e_offs = tl.arange(0, BLOCK_E)
    e_ok = e_offs < E
    tl.store(counts_ptr + e_offs, tl.zeros([BLOCK_E], tl.int32), mask=e_ok)
    for c in range(0, cap, BLOCK_F):  # sentinels: padding rows and blocks past the end
        f = c + tl.arange(0, BLOCK_F)
        tl.store(sorted_ptr + f, tl.zeros([BLOCK_F], tl.int32) + P, mask=f < cap)
        tl.store(block_expert_ptr + f, tl.zeros([BLOCK_F], tl.int32) - 1, mask=f < cap // BM)
    tl.debug_barrier()
    ids = tl.load(ids_ptr + offs, mask=valid, other=0).to(tl.int32)
    tl.atomic_add(counts_ptr + ids, tl.full([BLOCK_P], 1, tl.int32), mask=valid)
    tl.debug_barrier()
    # .cg: read what the atomics left in L2, never a stale L1 line.
    cnt = tl.load(counts_ptr + e_offs, mask=e_ok, other=0, cache_modifier=".cg")
    padded = (cnt + BM - 1) // BM * BM
    # sorted position i of expert e lands at pad_start[e] + (i - cnt_start[e])
    tl.store(shift_ptr + e_offs, (tl.cumsum(padded, 0) - padded) - (tl.cumsum(cnt, 0) - cnt),
             mask=e_ok)
    tl.debug_barrier()
    # Stable: the key orders by expert, then by pair index; invalid lanes sort last.
    key = tl.where(valid, ids * BLOCK_P + offs, (E + 1) * BLOCK_P + offs)
    key = tl.sort(key)
    expert = key // BLOCK_P
    dest = offs + tl.load(shift_ptr + expert, mask=valid, other=0, cache_modifier=".cg")
    tl.store(sorted_ptr + dest, key % BLOCK_P, mask=valid)
    # Each expert's run starts on a block boundary and its real rows come first, so the
    # pairs at a multiple of BM are exactly the first rows of that expert's blocks.
    tl.store(block_expert_ptr + dest // BM, expert, mask=valid & (dest % BM == 0))


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort (token, slot) pairs by expert and pad each expert's run to a multiple of block_m.

    Args:
        topk_ids: (M, k) int, expert of each token's k-th choice (ids in [0, num_experts)).
    Returns:
        sorted_ids: (P,) int32, flat pair index t*k + j, or M*k for a padding row.
        block_expert: (P / block_m,) int32, the expert of each block, -1 past the end.
        P = moe_align_capacity(M*k, E, block_m), a bound, so shapes depend on M only.
    Equal, element for element, to ref_fp8.ref_moe_align.
    """
    pairs = topk_ids.numel()
    dev = topk_ids.device
    if pairs == 0:
        return (torch.empty(0, dtype=torch.int32, device=dev),
                torch.empty(0, dtype=torch.int32, device=dev))
    if pairs > MAX_ALIGN_PAIRS:
        return moe_align_chunked(topk_ids, num_experts, block_m)[:2]
    cap = moe_align_capacity(pairs, num_experts, block_m)
    sorted_ids = torch.empty(cap, dtype=torch.int32, device=dev)
    block_expert = torch.empty(cap // block_m, dtype=torch.int32, device=dev)
    scratch = torch.empty(2, num_experts, dtype=torch.int32, device=dev)
    block_p = max(16, triton.next_power_of_2(pairs))
    _align_kernel[(1,)](topk_ids.reshape(-1), sorted_ids, block_expert, scratch[0], scratch[1],
                        pairs, num_experts, cap, BLOCK_P=block_p,
                        BLOCK_E=max(16, triton.next_power_of_2(num_experts)), BM=block_m,
                        BLOCK_F=1024, num_warps=8 if block_p >= 2048 else 4)
    return sorted_ids, block_expert


@triton.jit
def _grouped_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, sorted_ptr, block_expert_ptr,
                         topk_w_ptr, N, K, num_pairs, a_row_div,
                         stride_am, stride_asm, stride_we, stride_wn, stride_wse, stride_wsn,
                         stride_cm,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         MUL_WEIGHT: tl.constexpr):
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
    ws_rows = ws_ptr + e64 * stride_wse + (offs_n // BLOCK_K) * stride_wsn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k = kb * BLOCK_K + offs_k
        k_ok = k < K
        a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        a_s = tl.load(as_rows + kb, mask=row_ok, other=0.0)
        w_s = tl.load(ws_rows + kb, mask=n_ok, other=0.0)
        acc += tl.dot(a, tl.trans(w)) * a_s[:, None] * w_s[None, :]
    if MUL_WEIGHT:
        acc *= tl.load(topk_w_ptr + pair, mask=row_ok, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def fp8_grouped_gemm_nt(a, a_s, w, w_s, sorted_ids, block_expert, num_pairs: int,
                        a_row_div: int, topk_weights=None, block_m: int = 16,
                        block_n: int = 64, num_warps: int = 4, num_stages: int = 4,
                        out_dtype=torch.bfloat16) -> torch.Tensor:
    """out[p] = dequant(a[p // a_row_div]) @ dequant(w[expert(p)]).T (* topk_weights[p]).

    Args:
        a: (rows, K) fp8, a_s (rows, ceil(K/128)) fp32.
        w: (E, N, K) fp8, w_s (E, ceil(N/128), ceil(K/128)) fp32 (checkpoint layout per expert).
        sorted_ids, block_expert: from moe_align with the same block_m.
        num_pairs: M*k; out has one row per (token, slot) pair.
        a_row_div: k to read token rows (gate/up), 1 to read pair rows (down).
        topk_weights: (M*k,) fp32 multiplied into each row, or None.
    Returns:
        (num_pairs, N) out_dtype.
    """
    e, n, k = w.shape
    if tuple(w_s.shape) != (e, ceil_div(n, BLOCK), ceil_div(k, BLOCK)):
        raise ValueError(f"fp8_grouped_gemm_nt: w_s must be ({e}, {ceil_div(n, BLOCK)}, "
                         f"{ceil_div(k, BLOCK)}), got {tuple(w_s.shape)}")
    if a.shape[1] != k or a.dtype != FP8 or w.dtype != FP8:
        raise ValueError(f"fp8_grouped_gemm_nt: a {tuple(a.shape)} {a.dtype} vs w {tuple(w.shape)} {w.dtype}")
    out = torch.empty(num_pairs, n, dtype=out_dtype, device=a.device)
    if num_pairs == 0:
        return out
    grid = (block_expert.numel(), ceil_div(n, block_n))
    weights = topk_weights if topk_weights is not None else a_s  # unread when not multiplied
    _grouped_gemm_kernel[grid](
        a, a_s, w, w_s, out, sorted_ids, block_expert, weights, n, k, num_pairs, a_row_div,
        a.stride(0), a_s.stride(0), w.stride(0), w.stride(1), w_s.stride(0), w_s.stride(1),
        out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=BLOCK, MUL_WEIGHT=topk_weights is not None,
        num_warps=num_warps, num_stages=num_stages)
    return out


@triton.jit
def _combine_kernel(y_ptr, out_ptr, H, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    # out[t] = sum_j y[t*k + j] (rows already weighted), fp32 sum, one rounding.
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + (t * TOP_K + j) * H + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * H + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def moe_block_m(num_pairs: int, num_experts: int) -> int:
    """Rows per expert block: 16 while experts see a few rows each (decode), larger when
    the average expert run fills a tensor-core tile."""
    per_expert = num_pairs / max(num_experts, 1)
    return 16 if per_expert <= 16 else (32 if per_expert <= 48 else 64)


def use_prefill_path(pairs: int, num_experts: int, hidden: int, inter: int) -> bool:
    """Shape-only choice (so a CUDA graph of one batch size always takes one path)."""
    return (prefill_supported(hidden, inter) and pairs >= PREFILL_FROM_PAIRS
            and pairs >= PREFILL_MIN_ROWS_PER_EXPERT * num_experts)


def fp8_fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  w13: torch.Tensor, w13_s: torch.Tensor, w2: torch.Tensor, w2_s: torch.Tensor,
                  ue8m0: bool = False, prefill: bool | None = None,
                  prefill_config: PrefillConfig | None = None) -> torch.Tensor:
    """Routed experts of one MoE layer on block-FP8 weights.

    Args:
        x: (M, H) bf16 hidden states.
        topk_weights: (M, k) float routing weights; topk_ids: (M, k) int expert ids.
        w13: (E, 2I, H) fp8, gate rows [0, I) then up rows [I, 2I); w13_s (E, 2I/128, H/128).
        w2: (E, H, I) fp8; w2_s (E, H/128, I/128).
        prefill: force (True) or forbid (False) the prefill path; None: by shape
            (use_prefill_path). prefill_config: its tiles (benchmarks).
    Returns:
        (M, H) x.dtype: sum_j topk_weights[:, j] * expert_j(x).
    """
    m, h = x.shape
    top_k = topk_ids.shape[1]
    e = w13.shape[0]
    if w2.shape[0] != e or w2.shape[1] != h or w13.shape[2] != h or w13.shape[1] != 2 * w2.shape[2]:
        raise ValueError(f"fp8_fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do not "
                         f"fit hidden {h}")
    pairs = m * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    if prefill is None:
        prefill = use_prefill_path(pairs, e, h, w2.shape[2])
    out = torch.empty(m, h, dtype=x.dtype, device=x.device)
    if prefill:
        y = prefill_experts(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s, ue8m0=ue8m0,
                            config=prefill_config)
        _combine_kernel[(m, ceil_div(h, 1024))](y, out, h, TOP_K=top_k, BLOCK=1024)
        return out
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(topk_ids, e, bm)
    xq, xs = fp8_act_quant(x, ue8m0=ue8m0)
    gate_up = fp8_grouped_gemm_nt(xq, xs, w13, w13_s, sorted_ids, block_expert, pairs, top_k,
                                  block_m=bm)
    aq, as_ = fp8_silu_mul_quant(gate_up, ue8m0=ue8m0)
    y = fp8_grouped_gemm_nt(aq, as_, w2, w2_s, sorted_ids, block_expert, pairs, 1,
                            topk_weights=topk_weights.reshape(-1).float(), block_m=bm)
    _combine_kernel[(m, ceil_div(h, 1024))](y, out, h, TOP_K=top_k, BLOCK=1024)
    return out
