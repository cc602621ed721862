"""W4A8 (int4 experts, FP8 activations) fused MoE at DeepSeek-V3 size, side by side with our
block-FP8 fused MoE, bf16 `torch._grouped_mm`, and FlashInfer's W4A8 runner where it exists.

Run on a GPU from the repository root:
    PYTHONPATH=. python benchmarks/bench_w4a8_moe.py --quick   # ~2 min on an H200
    PYTHONPATH=. python benchmarks/bench_w4a8_moe.py           # more batches and tiles

Worker processes compile every timed specialisation first, in parallel (--no-warm: not).
The columns are the tile sets of w4a8_moe.NAMED_TILES; "ours" is the shipped DEFAULT_TILES,
"best variant" the fastest set that passed its fp32 check (nothing is picked or changed).

Sizes: hidden 7168, expert intermediate 2048, top-8, E = 256 (all routed experts on one GPU,
TP-style) and E = 32 (an EP8 shard whose tokens all route locally). Timed as CUDA-graph
replays (median). Every tile variant's output is checked against an fp32 reference before
it is timed. GB/s counts the int4 weight + scale bytes of the experts the batch touches
(what bounds decode); "/copy" divides by the copy bandwidth measured in the run; "vs fp8"
is our FP8 fused MoE's time over ours on the same routing (fp8 weights, same shapes).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from _fp8_common import CEIL_COPY_TBS, copy_bandwidth_tbs, time_ms
from ds_plugin.kernels.fp8_format import calc_diff, dequant_groups, quant_groups
from ds_plugin.kernels.fp8_moe import fp8_fused_moe, moe_align, moe_block_m
from ds_plugin.kernels.int4_format import dequant_int4, from_kernel_layout, to_tiles
from ds_plugin.kernels.ref_fp8 import random_fp8_weight, ref_silu_mul
from ds_plugin.kernels.ref_w4a8 import random_int4_weight, ref_static_quant
from ds_plugin.kernels.w4a8_moe import (NAMED_TILES, fp8_static_quant, w4a8_fused_moe,
                                        w4a8_gate_up_silu_quant, w4a8_grouped_gemm_nt,
                                        w4a8_tiles)

H, I, TOP_K = 7168, 2048, 8
DEV = "cuda"
# Whole-layer variants (w4a8_moe.NAMED_TILES), each checked against the fp32 reference
# before it is timed: call 2's tiles beside the new ones. The shipped table
# (w4a8_moe.DEFAULT_TILES) is the "ours" column.
VARIANTS = {n: t for n, t in NAMED_TILES.items() if n not in ("c2-decode", "c2-b512", "c2-n128")}
QUICK_E32 = ["g2-perm", "g2-tiled-perm", "g2-tiled-perm-fused"]  # n128 + g2 + fused spills at bm64


def _deq(w, s):
    return dequant_int4(from_kernel_layout(w), s)


def ref_by_expert(x, tw, ids, w13, s13, w2, s2, a13, a2):
    """The fp32 twin's quantization points, grouped by expert (fast enough at full size).
    Weights in the kernel layout, as the kernel gets them."""
    if a13 is None:
        xd = dequant_groups(*quant_groups(x))
    else:
        xd = ref_static_quant(x, a13).float() * a13
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        h = (xd[tok] @ _deq(w13[e], s13[e]).t()).to(torch.bfloat16)
        a = ref_silu_mul(h)
        if a2 is None:
            a = dequant_groups(*quant_groups(a))
        else:
            a = ref_static_quant(a, a2).float() * a2
        out.index_add_(0, tok, (a @ _deq(w2[e], s2[e]).t()) * tw[tok, slot, None])
    return out.to(torch.bfloat16)


def bf16_grouped_moe(x, tw, ids, w13t, w2t):
    """bf16 experts on torch._grouped_mm: sort pairs by expert, two grouped GEMMs, combine.
    w13t (E, H, 2I) and w2t (E, I, H) are transposed views of (E, N, K) weights."""
    m, k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(w13t.shape[0], dtype=torch.int32, device=x.device)
    counts.index_add_(0, flat.int(), torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    tok = order // k
    h = torch._grouped_mm(x[tok], w13t, offs=offs)
    a = (F.silu(h[:, :I].float()) * h[:, I:].float()).to(torch.bfloat16)
    y = torch._grouped_mm(a, w2t, offs=offs).float() * tw.reshape(-1)[order, None]
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(
        0, tok, y).to(x.dtype)


def flashinfer_probe() -> str:
    """What this FlashInfer offers for W4A8 MoE (the call itself needs CUTLASS's interleaved
    scale layout and a JIT build; not attempted in the bounded run)."""
    try:
        import flashinfer
    except Exception as e:  # noqa: BLE001 - report and go on
        return f"flashinfer not importable ({str(e).splitlines()[0][:60]})"
    found = []
    for mod, name in (("flashinfer.fused_moe", "CutlassW4A8Runner"),
                      ("flashinfer.fused_moe.runners", "CutlassW4A8Runner"),
                      ("flashinfer.fused_moe", "cutlass_fused_moe")):
        try:
            m = __import__(mod, fromlist=[name])
            if hasattr(m, name):
                found.append(f"{mod}.{name}")
        except Exception:  # noqa: BLE001
            pass
    return f"flashinfer {flashinfer.__version__}: " + (", ".join(found) or "no W4A8 MoE entry")


def _weights_for(tiles, w, wt):
    """The row-layout or the tiled copy of (w13, s13, w2, s2), as the variant reads it."""
    return wt if tiles.gate_up.tiled else w


def _routing(b, e):
    g = torch.Generator(device=DEV).manual_seed(b)
    x = torch.randn(b, H, device=DEV, generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(b, e, device=DEV, generator=g).softmax(-1).topk(TOP_K)
    return x, tw, ids


def warm_task(task):
    """Worker: one call of each variant at (E, batch) on uninitialised weights of the real
    shapes, so Triton compiles the timed specialisations (the on-disk cache serves them).
    The GEMMs specialise on the expert-block size, not on E: 32 experts stand in for 256
    where the block size is the same (the memory of 12 workers)."""
    e, b, names = task
    if moe_block_m(b * TOP_K, 32) == moe_block_m(b * TOP_K, e):
        e = min(e, 32)
    try:
        w13 = torch.empty(e, 2 * I, H // 2, dtype=torch.int8, device=DEV)
        s13 = torch.ones(e, 2 * I, H // 128, device=DEV)
        w2 = torch.empty(e, H, I // 2, dtype=torch.int8, device=DEV)
        s2 = torch.ones(e, H, I // 128, device=DEV)
        x, tw, ids = _routing(b, e)
        one = torch.ones(1, device=DEV)
        for name in names:
            w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, one, one, tiles=VARIANTS[name])
        if not names:  # the shipped tiles, static and dynamic
            w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, one, one)
            w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2)
        torch.cuda.synchronize()
        return task[:2], "ok"
    except Exception as err:  # noqa: BLE001 - reported; the timed run reports its own
        return task[:2], f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"


def warm(plan):
    """Triton specialises on the pair count being 1 or a multiple of 16 and compiles per
    expert-block size: one task per variant per (count class, block size) the plan times."""
    t0 = time.time()
    points = {}
    for e, batches, names in plan:
        for b in batches:
            points.setdefault((b * TOP_K % 16 == 0, moe_block_m(b * TOP_K, e)), (e, b, names))
    tasks = [(e, b, (n,)) for e, b, names in points.values() for n in names]
    tasks += [(e, b, ()) for e, b, _ in points.values()]
    workers = max(1, min(len(tasks), (os.cpu_count() or 4) - 2, 12))
    try:  # an executor (not mp.Pool): a worker that dies fails the warm-up, not the run
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(warm_task, tasks))
    except Exception as err:  # noqa: BLE001 - the timed run then compiles what it needs
        results = [(("all",), f"{type(err).__name__}: {str(err)[:120]}")]
    bad = [f"{t}: {m}" for t, m in results if m != "ok"]
    print(f"# compiled in {workers} workers, {len(tasks)} (E, batch, tiles) points, "
          f"{time.time() - t0:.0f} s" + ("; failures: " + "; ".join(bad) if bad else ""),
          flush=True)


def run(e, batches, names, w, wt, fp8w, bf16w, copy, per_gemm):
    w, wt = tuple(t[:e] for t in w), tuple(t[:e] for t in wt)
    w13, s13, w2, s2 = w
    f13, f13s, f2, f2s = (t[:e] for t in fp8w)
    expert_bytes = w13[0].numel() + w2[0].numel() + 4 * (s13[0].numel() + s2[0].numel())
    print(f"\n## E = {e} (H {H}, I {I}, top-{TOP_K}); static activation scales unless marked\n")
    hdr = ("| batch | experts | MB int4 | ours us | GB/s | /copy | vs fp8 | best variant us "
           "(name) | GB/s | /copy | vs fp8 | dynamic us | fp8 us | bf16 grouped_mm us | "
           + " | ".join(names) + " |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1), flush=True)
    for b in batches:
        x, tw, ids = _routing(b, e)
        hit = ids.unique().numel()
        # Static scales calibrated on this batch, as a checkpoint's would be on real data.
        a13 = torch.tensor([float(x.abs().max()) / 448], device=DEV)
        gate_up = x.float() @ _deq(w13[0], s13[0]).t()
        a2 = torch.tensor([4 * float(ref_silu_mul(gate_up).abs().max()) / 448], device=DEV)
        ref = ref_by_expert(x, tw, ids, *w, a13, a2)
        cells, best = [], (float("inf"), "-")
        for name in names:
            tiles = VARIANTS[name]
            args = (x, tw, ids, *_weights_for(tiles, w, wt), a13, a2)
            diff = calc_diff(w4a8_fused_moe(*args, tiles=tiles), ref)
            if not diff < 1e-3:
                cells.append(f"WRONG {diff:.1e}")
                continue
            t = time_ms(lambda: w4a8_fused_moe(*args, tiles=tiles)) * 1e3
            cells.append(f"{t:.1f}")
            best = min(best, (t, name), key=lambda p: p[0])
        args = (x, tw, ids, *w, a13, a2)
        d_def = calc_diff(w4a8_fused_moe(*args), ref)
        t_def = time_ms(lambda: w4a8_fused_moe(*args)) * 1e3
        dyn_args = (x, tw, ids, *w)
        dyn_diff = calc_diff(w4a8_fused_moe(*dyn_args), ref_by_expert(*dyn_args, None, None))
        t_dyn = time_ms(lambda: w4a8_fused_moe(*dyn_args)) * 1e3
        t_fp8 = time_ms(lambda: fp8_fused_moe(x, tw, ids, f13, f13s, f2, f2s)) * 1e3
        try:
            t_bf16 = time_ms(lambda: bf16_grouped_moe(x, tw, ids, *bf16w_for(bf16w, e))) * 1e3
            bf16_cell = f"{t_bf16:.1f}"
        except Exception as err:  # noqa: BLE001 - keep the row; say why the peer is absent
            bf16_cell = f"failed: {str(err).splitlines()[0][:50]}"
        nbytes = hit * expert_bytes

        def rate(t):
            return f"{nbytes / t / 1e3:.0f} | {nbytes / t / 1e6 / copy:.2f} | {t_fp8 / t:.2f}"
        ours = f"{t_def:.1f} | {rate(t_def)}" if d_def < 1e-3 else f"WRONG {d_def:.1e} | - | - | -"
        dyn = f"{t_dyn:.1f}" if dyn_diff < 1e-3 else f"WRONG {dyn_diff:.1e}"
        print(f"| {b} | {hit} | {nbytes / 1e6:.0f} | {ours} | {best[0]:.1f} ({best[1]}) | "
              f"{rate(best[0])} | {dyn} | {t_fp8:.1f} | {bf16_cell} | " + " | ".join(cells)
              + " |", flush=True)
        if b in per_gemm:
            gemm_split(b, e, x, ids, tw, w, wt, a13, a2, names)


def bf16w_for(bf16w, e):
    w13t, w2t = bf16w
    return w13t[:e], w2t[:e]


def gemm_split(b, e, x, ids, tw, w, wt, a13, a2, names):
    """Each GEMM of each variant alone (gate_up: with its SiLU-quant epilogue when fused,
    the separate SiLU-quant kernel is then not in the row; down: on that variant's input)."""
    pairs = ids.numel()
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(ids, e, bm)
    up_cells, down_cells = [], []
    for name in names:
        tiles = VARIANTS[name]
        w13, s13, w2, s2 = _weights_for(tiles, w, wt)
        xq = fp8_static_quant(x, a13, permute=tiles.perm)
        common = (sorted_ids, block_expert, pairs)
        if tiles.fused:
            def up():
                return w4a8_gate_up_silu_quant(xq, a13, w13, s13, a2, *common, TOP_K,
                                               block_m=bm, tile=tiles.gate_up, a_perm=tiles.perm)
        else:
            def up():
                return w4a8_grouped_gemm_nt(xq, a13, w13, s13, *common, TOP_K, block_m=bm,
                                            tile=tiles.gate_up, a_perm=tiles.perm)
        h = up()
        aq = h if tiles.fused else fp8_static_quant(h, a2, silu_mul=True, permute=tiles.perm)

        def down():
            return w4a8_grouped_gemm_nt(aq, a2, w2, s2, *common, 1, topk_weights=tw.reshape(-1),
                                        block_m=bm, tile=tiles.down, a_perm=tiles.perm)
        down()
        up_cells.append(f"{time_ms(up) * 1e3:.1f}")
        down_cells.append(f"{time_ms(down) * 1e3:.1f}")
    print(f"|  gate_up b{b} bm{bm} | " + " | ".join(f"{n}: {c}" for n, c in zip(names, up_cells))
          + " |", flush=True)
    print(f"|  down b{b} bm{bm} | " + " | ".join(f"{n}: {c}" for n, c in zip(names, down_cells))
          + " |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="bounded run (< 2 min on an H200)")
    p.add_argument("--no-warm", action="store_true", help="compile in this process only")
    ns = p.parse_args()
    t0 = time.time()
    names = list(VARIANTS)
    plan = [(256, [1, 8, 32, 128, 512] if ns.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
             names),
            (32, [32, 512] if ns.quick else [1, 8, 32, 64, 128, 256, 512],
             QUICK_E32 if ns.quick else names)]
    if not ns.no_warm:
        warm(plan)
    copy = copy_bandwidth_tbs()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy:.2f} TB/s "
          f"(brief: {CEIL_COPY_TBS}); {flashinfer_probe()}")
    print(f"# shipped tiles (w4a8_moe.DEFAULT_TILES): decode {w4a8_tiles(8, 256)}; "
          f"b512/E256 {w4a8_tiles(4096, 256)}; b512/E32 {w4a8_tiles(4096, 32)}")
    g = torch.Generator(device=DEV).manual_seed(0)
    # Random bytes: read as the kernel layout (the reference converts them back).
    w = (*random_int4_weight((256, 2 * I, H), DEV, g), *random_int4_weight((256, H, I), DEV, g))
    wt = (to_tiles(w[0]), w[1], to_tiles(w[2]), w[3])
    fp8w = (*random_fp8_weight((256, 2 * I, H), DEV, g), *random_fp8_weight((256, H, I), DEV, g))
    try:
        w13b = torch.randn(256, 2 * I, H, device=DEV, dtype=torch.bfloat16).mul_(0.01)
        w2b = torch.randn(256, H, I, device=DEV, dtype=torch.bfloat16).mul_(0.01)
        bf16w = (w13b.transpose(1, 2), w2b.transpose(1, 2))
    except torch.OutOfMemoryError:
        bf16w = None
    for e, batches, nm in plan:
        run(e, batches, nm, w, wt, fp8w, bf16w, copy,
            per_gemm=((1, 512) if ns.quick else batches) if e == 256 else
            (() if ns.quick else (32, 512)))
    print(f"# total wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
