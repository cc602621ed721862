"""One bounded sweep of the block-FP8 MoE prefill path (fp8_moe_prefill) on a GPU.

Variants of the prefill kernels (tiles, stages, scale strategy, TMA vs pointer A,
persistent or not, warp specialization) at DeepSeek-V3 expert size (H 7168, I 2048,
top-8) for E=32 at 2048 and 8192 tokens and E=256 at 8192, each checked against
today's decode kernel (and once against a dequantized fp32 torch computation on a
token subsample) before it is timed, beside bf16 torch._grouped_mm and rowwise-FP8
torch._scaled_grouped_mm (GEMMs of sorted tokens only: the peers get routing for free).

Run: `PYTHONPATH=. python benchmarks/sweep_fp8_moe_prefill.py [--quick]`. Variants are
compiled in parallel worker processes first (Triton's cache is shared), so the timed
process only loads them. Prints one markdown table per shape and a per-stage breakdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _fp8_common import time_ms, torch_grouped_peers  # noqa: E402
from ds_plugin.kernels.fp8_moe import fp8_fused_moe  # noqa: E402
from ds_plugin.kernels.fp8_moe_prefill import PrefillConfig  # noqa: E402
from ds_plugin.kernels.fp8_format import calc_diff
from ds_plugin.kernels.ref_fp8 import random_fp8_weight  # noqa: E402

H, I, TOP_K = 7168, 2048, 8
SHAPES = [(32, 2048), (32, 8192), (256, 8192)]
P = PrefillConfig
VARIANTS = {
    "base: bm128, 2x128 sub-tiles, st4/3, rescale, TMA, persistent": P(),
    "scale loads not pipelined, st4/4": P(pipeline_scales=False, down_stages=4),
    "rescale both sub-tiles, then both MMAs (1 wait per step)": P(rescale_first=True),
    "st3/3": P(stages=3, down_stages=3),
    "down 128-wide, st5": P(down_subs=1, down_stages=5),
    "down 128-wide, st3, 2 CTAs per SM": P(down_subs=1, down_stages=3, down_ctas_per_sm=2),
    "per-step scale (2 register sets; spills), down 128 st5": P(rescale=False, down_subs=1,
                                                                down_stages=5),
    "pointer-gather A (no gather pass)": P(a_tma=False),
    "non-persistent": P(persistent=False),
    "persistent loop flattened (ptxas serializes the wgmmas, C7515)": P(flatten=True),
    "group_m 8": P(group_m=8),
    "bm64, 4 warps, st5/4": P(block_m=64, num_warps=4, stages=5, down_stages=4),
    "bm64, 8 warps, st4/4": P(block_m=64, num_warps=8, down_stages=4),
    "bm64, 4 warps, st2/2, 2 CTAs per SM": P(block_m=64, num_warps=4, stages=2,
                                             down_stages=2, ctas_per_sm=2),
    "warp_specialize flag (same code on sm_90 in 3.6)": P(warp_specialize=True),
    "ABLATION base without block-scale work (wrong by design)": P(ablate_scales=True),
}
# Gluon warp-specialized kernels (fp8_moe_ws): never run before; a deadlock would stall the
# run, so they are timed in a separate invocation (`--gluon`).
GLUON_VARIANTS = {
    "gluon ws: TMA warp + 2 consumer WGs, st4/4": P(gluon_ws=True, down_stages=4),
    "gluon ws st3/3": P(gluon_ws=True, stages=3, down_stages=3),
    "gluon ws st4/4 group_m 8": P(gluon_ws=True, down_stages=4, group_m=8),
}


def _routing(m, e, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, H, device="cuda", generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(m, e, device="cuda", generator=g).softmax(-1).topk(TOP_K)
    return x, tw, ids


def _warm(name):
    # Worker: run the variant once at the sweep's H and I (kernel binaries depend on
    # those and the constexprs, not on E or the token count) to fill Triton's cache.
    torch.cuda.set_device(0)
    # top-8 needs at least 8 experts (the first H200 run died on topk(8) of 2)
    w13, s13 = random_fp8_weight((TOP_K, 2 * I, H), "cuda")
    w2, s2 = random_fp8_weight((TOP_K, H, I), "cuda")
    x, tw, ids = _routing(1024, TOP_K, 0)
    t = time.time()
    try:
        fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=True,
                      prefill_config={**VARIANTS, **GLUON_VARIANTS}[name])
        torch.cuda.synchronize()
        return name, time.time() - t, None
    except Exception as e:  # noqa: BLE001 - reported in the table
        return name, time.time() - t, f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"


def fp32_subsample_diff(out, x, tw, ids, w13, s13, w2, s2, n=8):
    """Dequantized fp32 torch MoE (activation quantization as the kernels do it) on n
    tokens, against out's rows."""
    from ds_plugin.kernels.ref_fp8 import ref_fused_moe
    rows = torch.linspace(0, x.shape[0] - 1, n, device="cuda").long()
    ref = ref_fused_moe(x[rows], tw[rows], ids[rows], w13, s13, w2, s2)
    return calc_diff(out[rows], ref)


def peers(ids, w13b, w2b):
    res = {}
    for name, fn in torch_grouped_peers(ids, w13b, w2b, I).items():
        try:
            res[name] = time_ms(fn)
        except Exception as ex:  # noqa: BLE001
            res[name] = f"failed: {str(ex).splitlines()[0][:80]}"
    return res


def breakdown(x, tw, ids, w13, s13, w2, s2, cfg):
    """ms of each stage of the prefill path (each timed alone, CUDA graph)."""
    from ds_plugin.kernels.fp8_moe_prefill import _launch_gemm, gather_rows, moe_align_chunked
    from ds_plugin.kernels.fp8_quant import fp8_act_quant
    e = w13.shape[0]
    pairs = ids.numel()
    sid, be, nb = moe_align_chunked(ids, e, cfg.block_m)
    xq, xs = fp8_act_quant(x)
    a, a_s = (gather_rows(xq, xs, sid, be, pairs, TOP_K, cfg.block_m) if cfg.a_tma
              else (xq, xs))
    cap = sid.numel()
    act = torch.empty(cap, I, dtype=torch.float8_e4m3fn, device="cuda")
    act_s = torch.empty(I // 128, cap, device="cuda")
    y = torch.empty(pairs, H, dtype=torch.bfloat16, device="cuda")
    tw_ = tw.reshape(-1).float()
    if cfg.gluon_ws:
        from ds_plugin.kernels.fp8_moe_ws import launch_gemm_ws

        def gemm(a_, as_, w, ws, o, os_, silu, stages):
            return launch_gemm_ws(a_, as_, w, ws, o, os_, sid, be, nb, tw_, pairs, silu, False,
                                  stages, cfg.group_m)
    else:
        def gemm(a_, as_, w, ws, o, os_, silu, stages):
            return _launch_gemm(a_, as_, w, ws, o, os_, sid, be, nb, tw_, pairs, TOP_K, silu,
                                False, cfg, cfg.a_tma if silu else True, stages)
    out = {
        "align": time_ms(lambda: moe_align_chunked(ids, e, cfg.block_m)),
        "act quant": time_ms(lambda: fp8_act_quant(x)),
        "gather": time_ms(lambda: gather_rows(xq, xs, sid, be, pairs, TOP_K, cfg.block_m)),
        "gate/up+silu+quant": time_ms(lambda: gemm(a, a_s, w13, s13, act, act_s, True,
                                                   cfg.stages)),
        "down": time_ms(lambda: gemm(act, act_s, w2, s2, y, act_s, False, cfg.down_stages)),
    }
    blocks = int(nb)
    out["tiles util"] = pairs / (blocks * cfg.block_m)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="base variant and peers only")
    ap.add_argument("--gluon", action="store_true", help="the Gluon variants (and the base)")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 4))
    ap.add_argument("--warm-timeout", type=float, default=150.0)
    args = ap.parse_args()
    if args.gluon:
        VARIANTS.update(GLUON_VARIANTS)
        names = list(VARIANTS)[:1] + list(GLUON_VARIANTS)
    else:
        names = list(VARIANTS)[:1] if args.quick else list(VARIANTS)
    t0 = time.time()
    ctx = torch.multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(args.workers, mp_context=ctx)
    futs = {pool.submit(_warm, n): n for n in names}
    done, pending = wait(futs, timeout=args.warm_timeout)
    warm = {}
    for f in done:
        n, dt, err = f.result()
        warm[n] = (dt, err)
    for f in pending:
        warm[futs[f]] = (None, f"warm-up unfinished after {args.warm_timeout} s (hang?)")
    if pending:  # a worker stuck in a kernel: end the workers this script started
        for proc in list(pool._processes.values()):
            proc.terminate()
    pool.shutdown(wait=not pending, cancel_futures=True)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}; compiled "
          f"{len(names)} variants in {time.time() - t0:.0f}s (parallel)", flush=True)
    e_max = max(e for e, _ in SHAPES)
    w13, s13 = random_fp8_weight((e_max, 2 * I, H), "cuda")
    w2, s2 = random_fp8_weight((e_max, H, I), "cuda")
    w13b = torch.randn(e_max, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H ** 0.5
    w2b = torch.randn(e_max, H, I, device="cuda", dtype=torch.bfloat16) / I ** 0.5
    for e, m in SHAPES:
        x, tw, ids = _routing(m, e, m + e)
        args_ = (x, tw, ids, w13[:e], s13[:e], w2[:e], s2[:e])
        flop = 2 * m * TOP_K * H * 3 * I
        base = fp8_fused_moe(*args_, prefill=False)
        t_dec = time_ms(lambda: fp8_fused_moe(*args_, prefill=False))
        pr = peers(ids, w13b[:e], w2b[:e])
        bf16 = pr.get("bf16 _grouped_mm")
        print(f"\n## E={e} tokens={m} (FLOP {flop / 1e12:.2f} T); t={time.time() - t0:.0f}s")
        print("| variant | ms | TFLOP/s | vs bf16 grouped_mm | diff vs decode kernel | note |")
        print("|---|---|---|---|---|---|")

        def row(name, ms, diff, note=""):
            if isinstance(ms, str):
                print(f"| {name} | - | - | - | - | {ms} |")
                return
            ratio = f"{bf16 / ms:.2f}x" if isinstance(bf16, float) else "-"
            print(f"| {name} | {ms:.3f} | {flop / ms / 1e9:.0f} | {ratio} | {diff} | {note} |",
                  flush=True)
        row("today's kernel (decode path)", t_dec, "-")
        for pname, ms in pr.items():
            row(pname, ms, "-", "peer: GEMMs of pre-sorted rows only")
        best = None
        for n in names:
            if warm[n][1]:
                row(n, f"compile/run failed: {warm[n][1]}", "")
                continue
            cfg = VARIANTS[n]
            try:
                out = fp8_fused_moe(*args_, prefill=True, prefill_config=cfg)
                d = calc_diff(out, base)
                if cfg.ablate_scales:
                    ms = time_ms(lambda: fp8_fused_moe(*args_, prefill=True, prefill_config=cfg))
                    row(n, ms, "n/a", "bound: what the block scales cost")
                    continue
                if not d < 1e-3 or out.float().isnan().any():
                    row(n, f"WRONG: calc_diff {d:.2e} vs decode kernel", "")
                    continue
                ms = time_ms(lambda: fp8_fused_moe(*args_, prefill=True, prefill_config=cfg))
                row(n, ms, f"{d:.1e}")
                if best is None or ms < best[1]:
                    best = (n, ms, out)
            except Exception as ex:  # noqa: BLE001 - keep the sweep going
                row(n, f"failed: {type(ex).__name__}: {str(ex).splitlines()[0][:100]}", "")
        if best is not None:
            d32 = fp32_subsample_diff(best[2], *args_)
            print(f"best: {best[0]}; calc_diff vs fp32 dequantized torch on 8 tokens {d32:.1e}")
            bd = breakdown(*args_, VARIANTS[best[0]])
            print("stages (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in bd.items()))
        del x, tw, ids
    print(f"\n# total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
