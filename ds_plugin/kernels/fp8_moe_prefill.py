"""Prefill path of the block-FP8 fused MoE: expert-sorted contiguous rows, persistent
programs, TMA tiles, and a gate/up GEMM whose epilogue is SiLU*mul + FP8 quantization.

Steps (all shapes static in the batch size, no host sync, so CUDA graphs capture it):
1. `moe_align_chunked`: the (token, slot) pairs sorted by expert, each expert's run padded
   to BLOCK_M, in three launches over 4096-pair chunks (any batch size).
2. `gather_rows`: the quantized tokens copied into that order (the A operand becomes one
   contiguous matrix that TMA can tile), activation scales stored K-major (one contiguous
   BLOCK_M vector per 128-deep K step).
3. `_moe_gemm_kernel` gate/up: each tile holds 128 gate and the matching 128 up columns,
   so the epilogue writes silu(gate) * up already quantized (one 128-group per row).
4. `_moe_gemm_kernel` down: routing weight applied, rows scattered back to pair order.

Block scales: a K step's scale is per row (activation) times one weight scalar (a
128-column sub-tile sits inside one 128x128 weight block). Two ways to apply it are kept
(`PrefillConfig.rescale`): multiply each step's product into the accumulator (needs a
second register set for the product), or keep the accumulator in units of the current
step's scale, rescaling it by prev/cur before the MMA adds into it (one register set, so
256-column tiles fit). Scales are positive (validated at load; padding rows get 1.0), so
the ratio is finite. `ref_fp8.ref_fused_moe` is the fp32 twin of the whole layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ds_plugin.kernels.fp8_format import AMAX_EPS, BLOCK, E4M3_MAX, FP8, ceil_div, round_e4m3
from ds_plugin.kernels.fp8_quant import _round_ue8m0, fp8_act_quant
from ds_plugin.kernels.fp8_moe_ws import launch_gemm_ws

ALIGN_CHUNK = 4096  # pairs per align program (one in-register sort each)
_MAX = tl.constexpr(E4M3_MAX)
_EPS = tl.constexpr(AMAX_EPS)


def moe_align_capacity(pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded length: every hit expert wastes at most block_m - 1 rows."""
    return ceil_div(pairs + min(pairs, num_experts) * (block_m - 1), block_m) * block_m


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int = 128
    down_subs: int = 2          # down tile width = down_subs * 128 columns
    num_warps: int = 8
    stages: int = 4             # gate/up (two B sub-tiles per step)
    down_stages: int = 3        # 4 with 256-wide tiles and pipelined scales passes 227 KB
    pipeline_scales: bool = True  # scale loads pipelined with the tiles (cp.async)
    rescale: bool = True        # accumulator kept in the current step's scale units
    rescale_first: bool = False  # rescale both sub-tiles, then issue both MMAs
    a_tma: bool = True          # gate/up A via TMA from gathered rows; else pointer gather
    persistent: bool = True
    # tl.range(flatten=True) over the persistent loop: ptxas then serializes every wgmma
    # (C7515: the per-tile accumulator reset lands inside the MMA pipeline). Kept to time it.
    flatten: bool = False
    ctas_per_sm: int = 1        # persistent grid = SMs * this (2 fits with bm64, stages 2)
    down_ctas_per_sm: int = 1   # 2 fits the 128-wide down tile at 3 stages: one CTA's
                                # epilogue overlaps the other's K loop (K is only 16 steps)
    group_m: int = 1            # m-blocks per band of the tile order (1: n fastest)
    warp_specialize: bool = False  # Triton's flag (a no-op on sm_90 in Triton 3.6)
    gluon_ws: bool = False      # fp8_moe_ws: Gluon loader warp + two consumer warpgroups
    ablate_scales: bool = False  # benchmarks only: no per-step scale work (wrong results),
                                 # to time what the block scales cost


# ---------------------------------------------------------------------------- align

@triton.jit
def _align_count_kernel(ids_ptr, counts_ptr, sorted_ptr, P, E, cap, fill_per_prog,
                        CHUNK: tl.constexpr, BLOCK_F: tl.constexpr):
    # Per-chunk expert histogram, and this program's share of the padding sentinels.
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    valid = offs < P
    ids = tl.load(ids_ptr + offs, mask=valid, other=0).to(tl.int32)
    tl.atomic_add(counts_ptr + c * E + ids, tl.full([CHUNK], 1, tl.int32), mask=valid)
    lo = c * fill_per_prog
    for f0 in range(lo, lo + fill_per_prog, BLOCK_F):
        f = f0 + tl.arange(0, BLOCK_F)
        tl.store(sorted_ptr + f, tl.zeros([BLOCK_F], tl.int32) + P,
                 mask=(f < cap) & (f < lo + fill_per_prog))


@triton.jit
def _align_offsets_kernel(counts_ptr, shift_ptr, block_expert_ptr, num_blocks_ptr, E, C,
                          n_blocks, BM: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    # One program: per-expert totals, padded run starts, where each chunk's rows of an
    # expert begin, and the expert of every BM-row block.
    cr = tl.arange(0, BLOCK_C)
    er = tl.arange(0, BLOCK_E)
    ok = (cr[:, None] < C) & (er[None, :] < E)
    cnt = tl.load(counts_ptr + cr[:, None] * E + er[None, :], mask=ok, other=0,
                  cache_modifier=".cg")
    total = tl.sum(cnt, 0)
    padded = (total + BM - 1) // BM * BM
    pad_end = tl.cumsum(padded, 0)
    pad_start = pad_end - padded
    before = tl.cumsum(cnt, 0) - cnt                 # this expert's rows in earlier chunks
    local = tl.cumsum(cnt, 1) - cnt                  # chunk rows of lower experts
    # sorted chunk position i of expert e lands at pad_start[e] + before[c,e] + (i - local[c,e])
    tl.store(shift_ptr + cr[:, None] * E + er[None, :], pad_start[None, :] + before - local,
             mask=ok)
    tl.store(num_blocks_ptr, tl.sum(padded, 0) // BM)
    pad_end = tl.where(er < E, pad_end, 2147483647)
    for b0 in range(0, n_blocks, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        ex = tl.sum((pad_end[None, :] <= (b * BM)[:, None]).to(tl.int32), 1)
        tl.store(block_expert_ptr + b, tl.where(ex < E, ex, -1), mask=b < n_blocks)


@triton.jit
def _align_scatter_kernel(ids_ptr, shift_ptr, sorted_ptr, P, E, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    offs = tl.arange(0, CHUNK)
    valid = c * CHUNK + offs < P
    ids = tl.load(ids_ptr + c * CHUNK + offs, mask=valid, other=0).to(tl.int32)
    key = tl.sort(tl.where(valid, ids * CHUNK + offs, (E + 1) * CHUNK + offs))
    expert = key // CHUNK
    dest = offs + tl.load(shift_ptr + c * E + expert, mask=valid, other=0)
    tl.store(sorted_ptr + dest, c * CHUNK + key % CHUNK, mask=valid)


def moe_align_chunked(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                      chunk: int | None = None):
    """fp8_moe.moe_align for any batch: the same arrays, plus num_blocks (1,) int32, the
    count of blocks holding real rows (block_expert >= 0 exactly there).

    chunk: pairs per program (a power of two; default ALIGN_CHUNK, or fewer for a batch
    that small).
    """
    pairs = topk_ids.numel()
    dev = topk_ids.device
    cap = moe_align_capacity(pairs, num_experts, block_m)
    chunk = chunk or min(ALIGN_CHUNK, max(16, triton.next_power_of_2(pairs)))
    chunks = ceil_div(pairs, chunk)
    n_blocks = cap // block_m
    sorted_ids = torch.empty(cap, dtype=torch.int32, device=dev)
    block_expert = torch.empty(n_blocks, dtype=torch.int32, device=dev)
    num_blocks = torch.empty(1, dtype=torch.int32, device=dev)
    counts = torch.zeros(chunks, num_experts, dtype=torch.int32, device=dev)
    shift = torch.empty(chunks, num_experts, dtype=torch.int32, device=dev)
    flat = topk_ids.reshape(-1)
    _align_count_kernel[(chunks,)](flat, counts, sorted_ids, pairs, num_experts, cap,
                                   ceil_div(cap, chunks), CHUNK=chunk, BLOCK_F=1024)
    _align_offsets_kernel[(1,)](counts, shift, block_expert, num_blocks, num_experts, chunks,
                                n_blocks, BM=block_m,
                                BLOCK_C=max(2, triton.next_power_of_2(chunks)),
                                BLOCK_E=max(16, triton.next_power_of_2(num_experts)),
                                BLOCK_B=64, num_warps=8)
    _align_scatter_kernel[(chunks,)](flat, shift, sorted_ids, pairs, num_experts,
                                     CHUNK=chunk, num_warps=8 if chunk >= 2048 else 4)
    return sorted_ids, block_expert, num_blocks


# --------------------------------------------------------------------------- gather

@triton.jit
def _gather_rows_kernel(q_ptr, s_ptr, sorted_ptr, block_expert_ptr, out_ptr, out_s_ptr,
                        num_pairs, top_k, KG, cap, BM: tl.constexpr):
    # One BM-row block per program: token rows of its pairs, 128 channels at a time.
    blk = tl.program_id(0)
    if tl.load(block_expert_ptr + blk) < 0:
        return
    rows = blk * BM + tl.arange(0, BM)
    pair = tl.load(sorted_ptr + rows)
    ok = pair < num_pairs
    tok = tl.where(ok, pair // top_k, 0).to(tl.int64)
    cols = tl.arange(0, 128)
    rows64 = rows.to(tl.int64)
    for g in range(0, KG):
        q = tl.load(q_ptr + tok[:, None] * (KG * 128) + g * 128 + cols[None, :],
                    mask=ok[:, None], other=0.0)
        tl.store(out_ptr + rows64[:, None] * (KG * 128) + g * 128 + cols[None, :], q)
        s = tl.load(s_ptr + tok * KG + g, mask=ok, other=1.0)
        tl.store(out_s_ptr + g * cap + rows, s)


def gather_rows(q, s, sorted_ids, block_expert, num_pairs: int, top_k: int, block_m: int):
    """Rows of q (M, K) fp8 and s (M, K/128) in sorted pair order: (cap, K) fp8 and the
    scales K-major (K/128, cap); padding rows get codes 0 and scale 1.0. Blocks past the
    end are left unwritten (no GEMM reads them)."""
    cap = sorted_ids.numel()
    k = q.shape[1]
    out = torch.empty(cap, k, dtype=FP8, device=q.device)
    out_s = torch.empty(k // BLOCK, cap, dtype=torch.float32, device=q.device)
    _gather_rows_kernel[(cap // block_m,)](q, s, sorted_ids, block_expert, out, out_s,
                                           num_pairs, top_k, k // BLOCK, cap, BM=block_m)
    return out, out_s


# ----------------------------------------------------------------------------- GEMM

@triton.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: tl.constexpr):
    # GROUP_M m-blocks share a band, n fastest inside it: the band's A rows and the
    # expert's B tiles stay in L2 while the programs of one wave use them.
    per_band = GROUP_M * num_n
    first = (tile // per_band) * GROUP_M
    rows = tl.minimum(num_m - first, GROUP_M)
    r = tile % per_band
    return first + r % rows, r // rows


@triton.jit
def _scaled_step(acc, a, b, s, s_prev, RESCALE: tl.constexpr, ABLATE: tl.constexpr):
    # One 128-deep K step of one 128-column sub-tile; s: (BM,) this step's scale.
    if ABLATE:
        return tl.dot(a, b.T, acc)
    if RESCALE:
        # acc is in units of s_prev; bring it to units of s and let the MMA add in place.
        return tl.dot(a, b.T, acc * (s_prev / s)[:, None])
    return acc + tl.dot(a, b.T) * s[:, None]


@triton.jit(do_not_specialize=["num_pairs", "top_k", "cap", "num_progs"])
def _moe_gemm_kernel(a_desc, a_ptr, a_s_ptr, b_desc, b_s_ptr, out_ptr, out_s_ptr,
                     sorted_ptr, block_expert_ptr, num_blocks_ptr, topk_w_ptr,
                     n_b, n_sub1, KB, num_pairs, top_k, cap, num_n, num_progs, stride_out,
                     stride_wse, stride_wsn,
                     BM: tl.constexpr, SUBS: tl.constexpr, SILU: tl.constexpr,
                     UE8M0: tl.constexpr, A_TMA: tl.constexpr, RESCALE: tl.constexpr,
                     GROUP_M: tl.constexpr, FLAT: tl.constexpr,
                     WS: tl.constexpr, INNER_STAGES: tl.constexpr = None,
                     ABLATE: tl.constexpr = False, RESCALE_FIRST: tl.constexpr = False):
    # A tile: BM sorted rows x 128 (one expert). B: SUBS sub-tiles of 128 weight rows,
    # sub-tile 1 at n_sub1 rows past sub-tile 0 (gate/up: I, the matching up rows; down:
    # 128, the next columns). SILU: out = quantized silu(gate)*up (cap, I) with K-major
    # scales; else out[pair] = bf16(acc * routing weight).
    pid = tl.program_id(0)
    num_m = tl.load(num_blocks_ptr)
    cols = tl.arange(0, 128)
    for tile in tl.range(pid, num_m * num_n, num_progs, flatten=FLAT, warp_specialize=WS):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        row0 = pid_m * BM
        rows = row0 + tl.arange(0, BM)
        e = tl.load(block_expert_ptr + pid_m).to(tl.int64)
        n0 = pid_n * (128 if SILU else SUBS * 128)
        b_row0 = (e * n_b + n0).to(tl.int32)
        b_row1 = b_row0 + n_sub1
        ws0 = b_s_ptr + e * stride_wse + (n0 // 128) * stride_wsn
        ws1 = ws0 + (n_sub1 // 128) * stride_wsn
        if not A_TMA:
            pair = tl.load(sorted_ptr + rows)
            tok = tl.where(pair < num_pairs, pair // top_k, 0).to(tl.int64)
        acc0 = tl.zeros((BM, 128), dtype=tl.float32)
        acc1 = tl.zeros((BM, 128), dtype=tl.float32)
        sp0 = tl.full((BM,), 1.0, tl.float32)
        sp1 = tl.full((BM,), 1.0, tl.float32)
        for kb in tl.range(0, KB, num_stages=INNER_STAGES):
            if A_TMA:
                a = a_desc.load([row0, kb * 128])
                a_s = tl.load(a_s_ptr + kb * cap + rows)
            else:
                a = tl.load(a_ptr + tok[:, None] * (KB * 128) + kb * 128 + cols[None, :])
                a_s = tl.load(a_s_ptr + tok * KB + kb)
            s0 = a_s * tl.load(ws0 + kb)
            if RESCALE_FIRST:
                # Both accumulators rescaled, then both MMAs: one wait per step, no
                # rescale overlapping an MMA of the same warpgroup.
                s1 = a_s * tl.load(ws1 + kb)
                x0 = acc0 * (sp0 / s0)[:, None]
                x1 = acc1 * (sp1 / s1)[:, None]
                acc0 = tl.dot(a, b_desc.load([b_row0, kb * 128]).T, x0)
                acc1 = tl.dot(a, b_desc.load([b_row1, kb * 128]).T, x1)
                sp1 = s1
            else:
                acc0 = _scaled_step(acc0, a, b_desc.load([b_row0, kb * 128]), s0, sp0, RESCALE,
                                    ABLATE)
                if SUBS == 2:
                    s1 = a_s * tl.load(ws1 + kb)
                    acc1 = _scaled_step(acc1, a, b_desc.load([b_row1, kb * 128]), s1, sp1,
                                        RESCALE, ABLATE)
                    sp1 = s1
            sp0 = s0
        if RESCALE:
            acc0 = acc0 * sp0[:, None]
            acc1 = acc1 * sp1[:, None]
        if SILU:
            # Mirrors fp8_silu_mul_quant on a bf16 gate_up: same rounding, same quant.
            g = acc0.to(tl.bfloat16).to(tl.float32)
            u = acc1.to(tl.bfloat16).to(tl.float32)
            v = g / (1.0 + tl.exp(-g)) * u
            s = tl.math.div_rn(tl.maximum(tl.max(tl.abs(v), axis=1), _EPS), _MAX)
            if UE8M0:
                s = _round_ue8m0(s)
            q = round_e4m3(tl.minimum(tl.maximum(tl.math.div_rn(v, s[:, None]), -_MAX), _MAX))
            o = out_ptr + rows.to(tl.int64)[:, None] * stride_out + n0 + cols[None, :]
            tl.store(o, q.to(out_ptr.dtype.element_ty))
            tl.store(out_s_ptr + pid_n * cap + rows, s)
        else:
            pair = tl.load(sorted_ptr + rows)
            ok = pair < num_pairs
            w = tl.load(topk_w_ptr + pair, mask=ok, other=0.0)
            o = out_ptr + pair.to(tl.int64)[:, None] * stride_out + n0 + cols[None, :]
            tl.store(o, (acc0 * w[:, None]).to(out_ptr.dtype.element_ty), mask=ok[:, None])
            if SUBS == 2:
                tl.store(o + 128, (acc1 * w[:, None]).to(out_ptr.dtype.element_ty),
                         mask=ok[:, None])


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 3  # interpreter: a few programs, each walking several tiles


def _launch_gemm(a, a_s, w, w_s, out, out_s, sorted_ids, block_expert, num_blocks, topk_w,
                 num_pairs, top_k, silu, ue8m0, cfg: PrefillConfig, a_tma, stages):
    e, n_b, k = w.shape
    bm = cfg.block_m
    cap = sorted_ids.numel()
    subs = 2 if silu else cfg.down_subs
    num_n = (n_b // 2) // 128 if silu else n_b // (128 * subs)
    b_desc = TensorDescriptor.from_tensor(w.view(e * n_b, k), [128, 128])
    a_desc = TensorDescriptor.from_tensor(a, [bm, 128]) if a_tma else b_desc
    max_tiles = (cap // bm) * num_n
    progs = max_tiles
    if cfg.persistent:
        progs = min(max_tiles, _num_sms(a.device) * (cfg.ctas_per_sm if silu
                                                      else cfg.down_ctas_per_sm))
    _moe_gemm_kernel[(progs,)](
        a_desc, a, a_s, b_desc, w_s, out, out_s, sorted_ids, block_expert, num_blocks, topk_w,
        n_b, n_b // 2 if silu else 128, k // BLOCK, num_pairs, top_k, cap, num_n, progs,
        out.stride(0), w_s.stride(0), w_s.stride(1),
        BM=bm, SUBS=subs, SILU=silu, UE8M0=ue8m0, A_TMA=a_tma, RESCALE=cfg.rescale,
        GROUP_M=cfg.group_m, FLAT=cfg.persistent and cfg.flatten, WS=cfg.warp_specialize,
        INNER_STAGES=stages if cfg.pipeline_scales else None, ABLATE=cfg.ablate_scales,
        RESCALE_FIRST=cfg.rescale_first and cfg.rescale and subs == 2,
        num_warps=cfg.num_warps, num_stages=stages)


def prefill_config_for(pairs: int, num_experts: int) -> PrefillConfig:
    """Tiles by shape. 128-row blocks waste up to 127 rows per expert; below ~256 rows per
    expert (E=256 under ~8k tokens) 64-row blocks keep more of each tile useful."""
    if pairs < 256 * num_experts:
        return PrefillConfig(block_m=64, num_warps=4, stages=5, down_stages=4)
    return PrefillConfig()


def prefill_supported(h: int, i: int) -> bool:
    """Shapes the TMA path tiles exactly: whole 128-blocks in H and I."""
    return h % BLOCK == 0 and i % BLOCK == 0


def prefill_experts(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s, ue8m0: bool = False,
                    config: PrefillConfig | None = None, x_quant=None) -> torch.Tensor:
    """Every (token, slot) pair through its expert: (M*k, H) bf16, row t*k+j holding
    topk_weights[t, j] * expert_j(x[t]) (fp8_moe's combine sums them).

    Shapes as fp8_fused_moe; needs prefill_supported(H, I). x_quant: (q, s) of x when the
    caller has it already.
    """
    cfg = config or prefill_config_for(m * topk_ids.shape[1], w13.shape[0])
    m, h = x.shape
    top_k = topk_ids.shape[1]
    e, n13, _ = w13.shape
    i = n13 // 2
    pairs = m * top_k
    bm = cfg.block_m
    sorted_ids, block_expert, num_blocks = moe_align_chunked(topk_ids, e, bm)
    cap = sorted_ids.numel()
    xq, xs = x_quant if x_quant is not None else fp8_act_quant(x, ue8m0=ue8m0)
    if cfg.a_tma:
        a, a_s = gather_rows(xq, xs, sorted_ids, block_expert, pairs, top_k, bm)
    else:
        a, a_s = xq, xs
    act = torch.empty(cap, i, dtype=FP8, device=x.device)
    act_s = torch.empty(i // BLOCK, cap, dtype=torch.float32, device=x.device)
    tw = topk_weights.reshape(-1).float()
    y = torch.empty(pairs, h, dtype=torch.bfloat16, device=x.device)
    if cfg.gluon_ws:
        launch_gemm_ws(a, a_s, w13, w13_s, act, act_s, sorted_ids, block_expert, num_blocks,
                       tw, pairs, True, ue8m0, cfg.stages, cfg.group_m)
        launch_gemm_ws(act, act_s, w2, w2_s, y, act_s, sorted_ids, block_expert, num_blocks,
                       tw, pairs, False, ue8m0, cfg.down_stages, cfg.group_m)
        return y
    _launch_gemm(a, a_s, w13, w13_s, act, act_s, sorted_ids, block_expert, num_blocks, tw,
                 pairs, top_k, True, ue8m0, cfg, cfg.a_tma, cfg.stages)
    _launch_gemm(act, act_s, w2, w2_s, y, act_s, sorted_ids, block_expert, num_blocks, tw,
                 pairs, top_k, False, ue8m0, cfg, True, cfg.down_stages)
    return y
