"""Hopper warp-specialized grouped GEMM for the MoE prefill path (Gluon, sm_90 only).

The same tiles and epilogues as fp8_moe_prefill._moe_gemm_kernel, arranged as DeepGEMM
arranges its FP8 GEMMs: one loader warp streams A (two 64-row halves), B (two 128-row
sub-tiles) and the A scales through a ring of shared-memory stages with TMA, and two
consumer warpgroups each own 64 rows of the 128-row tile. A consumer keeps one MMA in
flight while it rescales the other sub-tile's accumulator (the block scales' per-step
multiply), and the two consumers run unsynchronised, so the tensor cores are not idle
while the FMA units work. Stages are freed per consumer through mbarriers: no CTA-wide
barrier in the K loop. Triton 3.6's own warp specialization is Blackwell-only.

Not runnable under the Triton interpreter; fp8_moe_prefill's kernel is its CPU twin in
the tests (same tile order, same epilogue arithmetic).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                               warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ds_plugin.kernels.fp8_format import BLOCK


@gluon.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: gl.constexpr):
    per_band = GROUP_M * num_n
    first = (tile // per_band) * GROUP_M
    rows = gl.minimum(num_m - first, GROUP_M)
    r = tile % per_band
    return first + r % rows, r // rows


@gluon.jit
def _tile_origin(tile, block_expert_ptr, num_m, num_n, n_b, SILU: gl.constexpr,
                 GROUP_M: gl.constexpr):
    pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
    e = gl.load(block_expert_ptr + pid_m).to(gl.int64)
    n0 = pid_n * (128 if SILU else 256)
    return pid_m, pid_n, e, n0, (e * n_b + n0).to(gl.int32)


@gluon.jit
def _loader(c, SILU: gl.constexpr, UE8M0: gl.constexpr, GROUP_M: gl.constexpr, WG: gl.constexpr):
    (a_desc, b_desc, as_desc, bufs, bars, block_expert_ptr, num_blocks_ptr, n_b, n_sub1, KB, cap,
     num_n, num_progs, out_ptr, out_s_ptr, b_s_ptr, sorted_ptr, topk_w_ptr, num_pairs, stride_out,
     stride_wse, stride_wsn) = c
    a_bufs, b_bufs, as_bufs = bufs
    ready, empty = bars
    stages: gl.constexpr = b_bufs.type.shape[0] // 2
    nbytes: gl.constexpr = (2 * a_desc.block_type.nbytes + 2 * b_desc.block_type.nbytes
                            + 2 * as_desc.block_type.nbytes)
    num_m = gl.load(num_blocks_ptr)
    it = 0
    for tile in range(gl.program_id(0), num_m * num_n, num_progs):
        pid_m, pid_n, e, n0, b_row0 = _tile_origin(tile, block_expert_ptr, num_m, num_n, n_b,
                                                   SILU, GROUP_M)
        row0 = pid_m * 128
        for kb in range(KB):
            s = it % stages
            mbarrier.wait(empty.index(s), ((it // stages) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            k0 = kb * 128
            tma.async_copy_global_to_shared(a_desc, [row0, k0], bar, a_bufs.index(2 * s))
            tma.async_copy_global_to_shared(a_desc, [row0 + 64, k0], bar, a_bufs.index(2 * s + 1))
            tma.async_copy_global_to_shared(b_desc, [b_row0, k0], bar, b_bufs.index(2 * s))
            tma.async_copy_global_to_shared(b_desc, [b_row0 + n_sub1, k0], bar,
                                            b_bufs.index(2 * s + 1))
            tma.async_copy_global_to_shared(as_desc, [kb * cap + row0], bar, as_bufs.index(2 * s))
            tma.async_copy_global_to_shared(as_desc, [kb * cap + row0 + 64], bar,
                                            as_bufs.index(2 * s + 1))
            it += 1


@gluon.jit
def _round_ue8m0(s):
    bits = s.to(gl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(gl.int32)
    return (exp << 23).to(gl.float32, bitcast=True)


@gluon.jit
def _consumer(c, SILU: gl.constexpr, UE8M0: gl.constexpr, GROUP_M: gl.constexpr, WG: gl.constexpr):
    (a_desc, b_desc, as_desc, bufs, bars, block_expert_ptr, num_blocks_ptr, n_b, n_sub1, KB, cap,
     num_n, num_progs, out_ptr, out_s_ptr, b_s_ptr, sorted_ptr, topk_w_ptr, num_pairs, stride_out,
     stride_wse, stride_wsn) = c
    a_bufs, b_bufs, as_bufs = bufs
    ready, empty = bars
    stages: gl.constexpr = b_bufs.type.shape[0] // 2
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                   instr_shape=[16, 128, 32])
    row_l: gl.constexpr = gl.SliceLayout(1, mma)
    col_l: gl.constexpr = gl.SliceLayout(0, mma)
    cols = gl.arange(0, 128, layout=col_l)
    num_m = gl.load(num_blocks_ptr)
    it = 0
    for tile in range(gl.program_id(0), num_m * num_n, num_progs):
        pid_m, pid_n, e, n0, b_row0 = _tile_origin(tile, block_expert_ptr, num_m, num_n, n_b,
                                                   SILU, GROUP_M)
        rows = pid_m * 128 + WG * 64 + gl.arange(0, 64, layout=row_l)
        ws0 = b_s_ptr + e * stride_wse + (n0 // 128) * stride_wsn
        ws1 = ws0 + (n_sub1 // 128) * stride_wsn
        acc0 = gl.zeros((64, 128), gl.float32, layout=mma)
        acc1 = gl.zeros((64, 128), gl.float32, layout=mma)
        sp0 = gl.full((64,), 1.0, gl.float32, layout=row_l)
        sp1 = gl.full((64,), 1.0, gl.float32, layout=row_l)
        w0n = gl.load(ws0)
        w1n = gl.load(ws1)
        for kb in range(KB):
            s = it % stages
            w0 = w0n
            w1 = w1n
            kn = gl.minimum(kb + 1, KB - 1)  # next step's weight scales, loaded early
            w0n = gl.load(ws0 + kn)
            w1n = gl.load(ws1 + kn)
            mbarrier.wait(ready.index(s), (it // stages) & 1)
            a_s = as_bufs.index(2 * s + WG).load(row_l)
            s0 = a_s * w0
            s1 = a_s * w1
            # Both accumulators are complete here (waited below), so rescaling them does
            # not touch a register an MMA in flight owns (ptxas would serialize every MMA).
            acc0 = acc0 * (sp0 / s0)[:, None]
            acc1 = acc1 * (sp1 / s1)[:, None]
            a_t = a_bufs.index(2 * s + WG)
            acc0 = warpgroup_mma(a_t, b_bufs.index(2 * s).permute((1, 0)), acc0, is_async=True)
            acc1 = warpgroup_mma(a_t, b_bufs.index(2 * s + 1).permute((1, 0)), acc1,
                                 is_async=True)
            acc0, acc1 = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1))
            # The scales were read through the generic proxy; TMA will overwrite them.
            fence_async_shared()
            mbarrier.arrive(empty.index(s))
            sp0 = s0
            sp1 = s1
            it += 1
        acc0 = acc0 * sp0[:, None]
        acc1 = acc1 * sp1[:, None]
        if SILU:
            g = acc0.to(gl.bfloat16).to(gl.float32)
            u = acc1.to(gl.bfloat16).to(gl.float32)
            v = g / (1.0 + gl.exp(-g)) * u
            sc = gl.div_rn(gl.maximum(gl.max(gl.abs(v), axis=1), 1e-10), 448.0)
            if UE8M0:
                sc = _round_ue8m0(sc)
            q = gl.minimum(gl.maximum(gl.div_rn(v, sc[:, None]), -448.0), 448.0)
            o = out_ptr + rows.to(gl.int64)[:, None] * stride_out + n0 + cols[None, :]
            gl.store(o, q.to(out_ptr.dtype.element_ty))
            gl.store(out_s_ptr + pid_n * cap + rows, sc)
        else:
            pair = gl.load(sorted_ptr + rows)
            ok = pair < num_pairs
            w = gl.load(topk_w_ptr + pair, mask=ok, other=0.0)
            o = out_ptr + pair.to(gl.int64)[:, None] * stride_out + n0 + cols[None, :]
            gl.store(o, (acc0 * w[:, None]).to(out_ptr.dtype.element_ty), mask=ok[:, None])
            gl.store(o + 128, (acc1 * w[:, None]).to(out_ptr.dtype.element_ty), mask=ok[:, None])


@gluon.jit
def _moe_gemm_ws_kernel(a_desc, b_desc, as_desc, block_expert_ptr, num_blocks_ptr, n_b, n_sub1,
                        KB, cap, num_n, num_progs, out_ptr, out_s_ptr, b_s_ptr, sorted_ptr,
                        topk_w_ptr, num_pairs, stride_out, stride_wse, stride_wsn,
                        SILU: gl.constexpr, UE8M0: gl.constexpr, GROUP_M: gl.constexpr,
                        STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr):
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [2 * STAGES] + a_desc.block_type.shape,
                                       a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [2 * STAGES] + b_desc.block_type.shape,
                                       b_desc.layout)
    as_bufs = gl.allocate_shared_memory(as_desc.dtype, [2 * STAGES] + as_desc.block_type.shape,
                                        as_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
    c = (a_desc, b_desc, as_desc, (a_bufs, b_bufs, as_bufs), (ready, empty), block_expert_ptr,
         num_blocks_ptr, n_b, n_sub1, KB, cap, num_n, num_progs, out_ptr, out_s_ptr, b_s_ptr,
         sorted_ptr, topk_w_ptr, num_pairs, stride_out, stride_wse, stride_wsn)
    gl.warp_specialize([(_consumer, (c, SILU, UE8M0, GROUP_M, 0)),
                        (_consumer, (c, SILU, UE8M0, GROUP_M, 1)),
                        (_loader, (c, SILU, UE8M0, GROUP_M, 0))], [4, 1], [CONSUMER_REGS, 24])


def launch_gemm_ws(a, a_s, w, w_s, out, out_s, sorted_ids, block_expert, num_blocks, topk_w,
                   num_pairs, silu: bool, ue8m0: bool, stages: int = 4, group_m: int = 1,
                   num_sms: int | None = None):
    """The warp-specialized twin of fp8_moe_prefill._launch_gemm (gathered A rows, K-major
    A scales, 128-row tiles, two 128-column sub-tiles)."""
    e, n_b, k = w.shape
    cap = sorted_ids.numel()
    fp8 = gl.float8e4nv
    layout = gl.NVMMASharedLayout.get_default_for
    a_desc = TensorDescriptor.from_tensor(a, [64, 128], layout([64, 128], fp8))
    b_desc = TensorDescriptor.from_tensor(w.view(e * n_b, k), [128, 128], layout([128, 128], fp8))
    # K-major scales (K/128, cap) as one row: a step's 64 scales are one 256-byte TMA box.
    as_desc = TensorDescriptor.from_tensor(a_s.view(-1), [64], layout([64], gl.float32))
    num_n = (n_b // 2) // 128 if silu else n_b // 256
    max_tiles = (cap // 128) * num_n
    sms = num_sms or torch.cuda.get_device_properties(a.device).multi_processor_count
    progs = min(max_tiles, sms)
    _moe_gemm_ws_kernel[(progs,)](
        a_desc, b_desc, as_desc, block_expert, num_blocks, n_b, n_b // 2 if silu else 128,
        k // BLOCK, cap, num_n, progs, out, out_s, w_s, sorted_ids, topk_w, num_pairs,
        out.stride(0), w_s.stride(0), w_s.stride(1),
        SILU=silu, UE8M0=ue8m0, GROUP_M=group_m, STAGES=stages, CONSUMER_REGS=232,
        num_warps=4, maxnreg=168)
