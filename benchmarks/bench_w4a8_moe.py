"""W4A8 (int4 experts, FP8 activations) fused MoE at DeepSeek-V3 size, side by side with our
block-FP8 fused MoE, bf16 `torch._grouped_mm`, and FlashInfer's W4A8 runner where it exists.

Run on a GPU from the repository root:
    PYTHONPATH=. python benchmarks/bench_w4a8_moe.py --quick   # < 3 min on an H200
    PYTHONPATH=. python benchmarks/bench_w4a8_moe.py           # more batches and tiles

Sizes: hidden 7168, expert intermediate 2048, top-8, E = 256 (all routed experts on one GPU,
TP-style) and E = 32 (an EP8 shard whose tokens all route locally). Timed as CUDA-graph
replays (median). Every tile variant's output is checked against an fp32 reference before
it is timed. GB/s counts the int4 weight + scale bytes of the experts the batch touches
(what bounds decode); "/copy" divides by the copy bandwidth measured in the run; "vs fp8"
is our FP8 fused MoE's time over ours on the same routing (fp8 weights, same shapes).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from _fp8_common import CEIL_COPY_TBS, copy_bandwidth_tbs, time_ms
from ds_plugin.kernels.fp8_format import calc_diff, dequant_groups, quant_groups
from ds_plugin.kernels.fp8_moe import fp8_fused_moe, moe_align, moe_block_m
from ds_plugin.kernels.int4_format import dequant_int4, from_kernel_layout
from ds_plugin.kernels.ref_fp8 import random_fp8_weight, ref_silu_mul
from ds_plugin.kernels.ref_w4a8 import random_int4_weight, ref_static_quant
from ds_plugin.kernels.w4a8_moe import (MoETiles, TileConfig, fp8_static_quant, w4a8_fused_moe,
                                        w4a8_grouped_gemm_nt, w4a8_tiles)

H, I, TOP_K = 7168, 2048, 8
DEV = "cuda"
VARIANTS = [TileConfig(), TileConfig(swap_ab=True), TileConfig(block_n=128, swap_ab=True),
            TileConfig(block_n=128, swap_ab=True, num_stages=3),
            TileConfig(block_n=256, num_warps=8, num_stages=3, swap_ab=True),
            TileConfig(block_n=128, num_warps=8)]
MORE_VARIANTS = [TileConfig(block_n=64, swap_ab=True, num_stages=6),
                 TileConfig(block_n=128, swap_ab=True, num_warps=8),
                 TileConfig(block_n=256, swap_ab=True, num_warps=4, num_stages=3),
                 TileConfig(block_n=128, num_warps=4)]


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


def check_variant(tiles, args, ref) -> float:
    out = w4a8_fused_moe(*args, tiles=tiles)
    return calc_diff(out, ref)


def gemm_inputs(x, ids, w13, s13, a13, e):
    pairs = ids.numel()
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(ids, e, bm)
    xq = fp8_static_quant(x, a13)
    h = w4a8_grouped_gemm_nt(xq, a13, w13, s13, sorted_ids, block_expert, pairs, TOP_K,
                             block_m=bm)
    aq = fp8_static_quant(h, a13.new_tensor([float(ref_silu_mul(h).abs().max()) / 448]),
                          silu_mul=True)
    return bm, sorted_ids, block_expert, xq, aq


def run(e, batches, variants, w, fp8w, bf16w, copy, per_gemm):
    w13, s13, w2, s2 = (t[:e] for t in w)
    f13, f13s, f2, f2s = (t[:e] for t in fp8w)
    expert_bytes = w13[0].numel() + w2[0].numel() + 4 * (s13[0].numel() + s2[0].numel())
    print(f"\n## E = {e} (H {H}, I {I}, top-{TOP_K}); static activation scales unless marked\n")
    hdr = ("| batch | experts | MB int4 | ours us (tile) | GB/s | /copy | dynamic us | fp8 us "
           "| vs fp8 | bf16 grouped_mm us | vs bf16 | " + " | ".join(str(v) for v in variants)
           + " |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1), flush=True)
    for b in batches:
        g = torch.Generator(device=DEV).manual_seed(b)
        x = torch.randn(b, H, device=DEV, generator=g).to(torch.bfloat16)
        tw, ids = torch.randn(b, e, device=DEV, generator=g).softmax(-1).topk(TOP_K)
        hit = ids.unique().numel()
        # Static scales calibrated on this batch, as a checkpoint's would be on real data.
        a13 = torch.tensor([float(x.abs().max()) / 448], device=DEV)
        gate_up = x.float() @ _deq(w13[0], s13[0]).t()
        a2 = torch.tensor([4 * float(ref_silu_mul(gate_up).abs().max()) / 448], device=DEV)
        args = (x, tw, ids, w13, s13, w2, s2, a13, a2)
        ref = ref_by_expert(*args)
        cells, best = [], (float("inf"), None)
        for v in variants:
            tiles = MoETiles(v, v)
            diff = check_variant(tiles, args, ref)
            if not diff < 1e-3:
                cells.append(f"WRONG {diff:.1e}")
                continue
            t = time_ms(lambda: w4a8_fused_moe(*args, tiles=tiles)) * 1e3
            cells.append(f"{t:.1f}")
            best = min(best, (t, v), key=lambda p: p[0])
        t_def = time_ms(lambda: w4a8_fused_moe(*args)) * 1e3
        ours, tile = min((t_def, "default"), (best[0], str(best[1])))
        dyn_args = (x, tw, ids, w13, s13, w2, s2)
        dyn_diff = calc_diff(w4a8_fused_moe(*dyn_args), ref_by_expert(*dyn_args, None, None))
        t_dyn = time_ms(lambda: w4a8_fused_moe(*dyn_args)) * 1e3
        t_fp8 = time_ms(lambda: fp8_fused_moe(x, tw, ids, f13, f13s, f2, f2s)) * 1e3
        try:
            t_bf16 = time_ms(lambda: bf16_grouped_moe(x, tw, ids, *bf16w_for(bf16w, e))) * 1e3
            bf16_cell = f"{t_bf16:.1f} | {t_bf16 / ours:.2f}"
        except Exception as err:  # noqa: BLE001 - keep the row; say why the peer is absent
            bf16_cell = f"failed: {str(err).splitlines()[0][:50]} | -"
        mb = hit * expert_bytes / 1e6
        gbs = hit * expert_bytes / ours / 1e3
        dyn = f"{t_dyn:.1f}" if dyn_diff < 1e-3 else f"WRONG {dyn_diff:.1e}"
        print(f"| {b} | {hit} | {mb:.0f} | {ours:.1f} ({tile}) | {gbs:.0f} | "
              f"{gbs / 1e3 / copy:.2f} | {dyn} | {t_fp8:.1f} | {t_fp8 / ours:.2f} | "
              f"{bf16_cell} | " + " | ".join(cells) + " |", flush=True)
        if b in per_gemm:
            gemm_split(b, e, x, ids, tw, w13, s13, w2, s2, a13, variants)


def bf16w_for(bf16w, e):
    w13t, w2t = bf16w
    return w13t[:e], w2t[:e]


def gemm_split(b, e, x, ids, tw, w13, s13, w2, s2, a13, variants):
    """Each GEMM alone per tile (outputs compared with the default tile's first)."""
    bm, sorted_ids, block_expert, xq, aq = gemm_inputs(x, ids, w13, s13, a13, e)
    pairs = ids.numel()
    one = a13
    jobs = {"gate_up": lambda v: w4a8_grouped_gemm_nt(xq, one, w13, s13, sorted_ids,
                                                      block_expert, pairs, TOP_K, block_m=bm,
                                                      tile=v),
            "down": lambda v: w4a8_grouped_gemm_nt(aq, one, w2, s2, sorted_ids, block_expert,
                                                   pairs, 1, topk_weights=tw.reshape(-1),
                                                   block_m=bm, tile=v)}
    for name, fn in jobs.items():
        base = fn(TileConfig())
        cells = []
        for v in variants:
            d = calc_diff(fn(v), base)
            cells.append(f"{time_ms(lambda: fn(v)) * 1e3:.1f}" if d < 1e-5 else f"WRONG {d:.0e}")
        print(f"|  {name} b{b} bm{bm} | " + " | ".join(f"{v}: {c}" for v, c in zip(variants, cells))
              + " |", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="bounded run (< 3 min on an H200)")
    ns = p.parse_args()
    copy = copy_bandwidth_tbs()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy:.2f} TB/s "
          f"(brief: {CEIL_COPY_TBS}); {flashinfer_probe()}")
    print(f"# default tiles at decode: {w4a8_tiles(8, 256)}")
    g = torch.Generator(device=DEV).manual_seed(0)
    # Random bytes: read as the kernel layout (the reference converts them back).
    w = (*random_int4_weight((256, 2 * I, H), DEV, g), *random_int4_weight((256, H, I), DEV, g))
    fp8w = (*random_fp8_weight((256, 2 * I, H), DEV, g), *random_fp8_weight((256, H, I), DEV, g))
    try:
        w13b = torch.randn(256, 2 * I, H, device=DEV, dtype=torch.bfloat16).mul_(0.01)
        w2b = torch.randn(256, H, I, device=DEV, dtype=torch.bfloat16).mul_(0.01)
        bf16w = (w13b.transpose(1, 2), w2b.transpose(1, 2))
    except torch.OutOfMemoryError:
        bf16w = None
    variants = VARIANTS if ns.quick else VARIANTS + MORE_VARIANTS
    batches = [1, 8, 32, 128, 512] if ns.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    run(256, batches, variants, w, fp8w, bf16w, copy,
        per_gemm=(1, 32, 512) if ns.quick else batches)
    # The shard's larger per-expert batches need new compiles per tile: fewer in --quick.
    run(32, [32, 128, 512] if ns.quick else [1, 8, 32, 64, 128, 256, 512],
        [VARIANTS[i] for i in (2, 4, 5)] if ns.quick else variants, w, fp8w, bf16w, copy,
        per_gemm=() if ns.quick else (32, 512))
    return 0


if __name__ == "__main__":
    sys.exit(main())
