"""MLA decode at issue 15's grid: ours (the shipped default, autotuned) vs FlashInfer fa3 / fa2.

Grid: 16 query heads (DeepSeek-V3 at TP8) and 128 (DP attention) x batch {1, 32, 128} x context
{4k, 32k} x BF16 / FP8 e4m3 latent cache (576 values a token, pages of 64, one query token);
`--full` adds batch 8/64 and context 1k/16k. Per row: time (median of CUDA-graph replays; each
replay walks enough disjoint page sets to read >= 256 MB, so small caches are not served from
L2), GB/s on the KV bytes, TFLOP/s, the fractions of the measured copy bandwidth and bf16 matmul
rate, FlashInfer's `BatchMLAPagedAttentionWrapper` (`fa3`, `fa2`) over the same pages, and
`vs_peer` = the best peer's time / ours (> 1: ours faster). Variant columns time the opt-in paths
that the default does not take yet, to settle them: `ptx` (fp8: int32 words converted by the
hardware pair converter, paged tiles) and `tma` (128 heads bf16: TMA tile loads). `vdiff` /
`pdiff` are the largest |variant - ours| / |peer - ours| over the outputs (bf16 values of order 0.1;
a few 1e-3 expected, one bf16 ulp or fp8 rounding).

Compiling comes first and in parallel: worker processes build every Triton kernel the timing
will load (the autotune configs and the variants, at the timed specialisations) and FlashInfer's
JIT modules; the timing then finds them in the on-disk caches.

Usage: PYTHONPATH=. python benchmarks/bench_mla_decode.py [--full] [--no-flashinfer]
       [--no-variants] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time

import torch
import triton
from _mla_common import (BYTES_MODEL, DIM, PAGE, RANK, ceilings, flashinfer_backends, flashinfer_runner,
                         flashinfer_warm, time_graph)

# Opt-in variants timed beside the default: name -> ({heads: config}, cache dtypes).
VARIANTS = {
    "ptx": ({16: {"BLOCK_H": 16, "BLOCK_N": 64, "num_warps": 8, "num_stages": 5, "PAGED_TILE": True, "FP8_CVT": 4},
             128: {"BLOCK_H": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 5, "PAGED_TILE": True,
                   "FP8_CVT": 4}}, ("fp8",)),
    "tma": ({128: {"BLOCK_H": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 5, "TMA": True}}, ("bf16",)),
}
# Batch-1 latency of the kernel before issue 15 (benchmarks/README.md, H200 2026-11-29, c803ba7).
PREVIOUS_B1_US = {(16, "bf16", 4096): 20.3, (16, "bf16", 32768): 42.4, (16, "fp8", 4096): 23.0,
                  (16, "fp8", 32768): 46.3, (128, "bf16", 4096): 20.4, (128, "bf16", 32768): 128.9,
                  (128, "fp8", 4096): 23.6, (128, "fp8", 32768): 151.2}


def _set_allocator():
    # TMA variants keep their device-side tensor descriptors in scratch from this hook.
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def _cache(kv, blocks):
    cache = torch.randn(blocks, PAGE, DIM, device="cuda").to(torch.bfloat16)
    if kv == "bf16":
        return cache, None
    k_scale = torch.tensor([cache.abs().amax().item() / 448], device="cuda")
    return (cache.float() / k_scale).to(torch.float8_e4m3fn), k_scale


def _configs(heads, kv):
    """(name, config or None for the default) of every path timed at this point."""
    out = [("ours", None)]
    for name, (per_heads, kinds) in VARIANTS.items():
        if kv in kinds and heads in per_heads:
            out.append((name, per_heads[heads]))
    return out


def compile_task(task):
    """Worker: run every config the timing will run at (heads, kv, batch, splits, width) on a
    one-token cache, so Triton compiles the same specialisations (pointer alignment, strides,
    split count and launch-size classes match the timed calls; lengths do not matter)."""
    heads, kv, batch, splits, pages = task
    try:
        from ds_plugin.kernels.mla_decode import _BF16_CONFIGS, _FP8_CONFIGS, _prune, mla_decode

        _set_allocator()
        cache, k_scale = _cache(kv, 64)
        table = torch.zeros(batch, pages, dtype=torch.int32, device="cuda")
        seq = torch.ones(batch, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, 1, heads, DIM, device="cuda").to(torch.bfloat16)
        tuned = _prune(_FP8_CONFIGS if kv == "fp8" else _BF16_CONFIGS, {"ROWS": heads})
        cfgs = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in tuned]
        cfgs += [c for name, c in _configs(heads, kv) if c is not None]
        for cfg in cfgs:
            mla_decode(q, cache, table, seq, DIM**-0.5, RANK, k_scale=k_scale, num_splits=splits, config=cfg)
        torch.cuda.synchronize()
        return task, "ok"
    except Exception as e:  # noqa: BLE001 - reported; the timed process then reports its own
        return task, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def _warm(points, fi, sms):
    from ds_plugin.kernels.mla_decode import _work_hint, mla_decode_num_splits

    # One launch shape per specialisation class: Triton specialises an int on == 1 and % 16 == 0
    # (the split count, and the launch-size autotune key); batch and length change nothing else.
    tasks = {}
    for h, kv, b, ctx in points:
        s = mla_decode_num_splits(b, h, ctx, sms)
        cls = (h, kv, s == 1, s % 16 == 0, _work_hint(b * s) % 16 == 0)
        tasks.setdefault(cls, (h, kv, b, s, 64))
    tasks = list(tasks.values())
    fi_tasks = [(b, kv) for b in fi for kv in ("bf16", "fp8")]
    workers = max(2, min(len(tasks) + len(fi_tasks), (os.cpu_count() or 4) - 2, 14))
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        fi_async = pool.map_async(flashinfer_warm, fi_tasks, chunksize=1)  # the longest first
        results = pool.map(compile_task, tasks, chunksize=1)
        fi_results = fi_async.get()
    bad = [f"{t}: {m}" for t, m in results if m != "ok"] + [f"{b} {kv}: {m}" for b, kv, m in fi_results if m != "ok"]
    print(f"# compiled in {workers} workers: {len(tasks)} Triton launch shapes, {len(fi_tasks)} FlashInfer "
          f"modules, {time.time() - t0:.0f} s" + ("; failures: " + "; ".join(bad) if bad else ""), flush=True)


def _pick_name(cfg):
    if cfg is None:
        return "-"
    kw = cfg.kwargs
    return (f"{'p' if kw.get('PAGED_TILE') else 'r'}{kw['BLOCK_H']}x{kw['BLOCK_N']}s{cfg.num_stages}"
            + (f"c{kw['FP8_CVT']}" if kw.get("FP8_CVT") else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="batch 1/8/32/64/128 x context 1k/4k/16k/32k")
    ap.add_argument("--no-flashinfer", action="store_true")
    ap.add_argument("--no-variants", action="store_true", help="the default only (no ptx/tma columns)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    t_start = time.time()
    if args.no_variants:
        VARIANTS.clear()
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    print(f"# {props.name}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}")
    ceil = ceilings()
    print(f"# ceilings: copy {ceil['copy'] / 1e12:.2f} TB/s (4 GiB eager device-to-device copy, read + write "
          f"counted; the same copy replayed from a CUDA graph: {ceil['copy_graph'] / 1e12:.2f} TB/s), "
          f"bf16 matmul {ceil['mm'] / 1e12:.0f} TFLOP/s (8192^3)")
    print(f"# {BYTES_MODEL}; FLOPs = 2 x batch x heads x context x (576 + 512)")
    fi, why = ([], "--no-flashinfer") if args.no_flashinfer else flashinfer_backends()
    if fi:
        import flashinfer
        why = f"flashinfer {flashinfer.__version__}"
    print(f"# FlashInfer: {', '.join(fi) if fi else 'not timed'} ({why})")
    batches, contexts = (([1, 8, 32, 64, 128], [1024, 4096, 16384, 32768]) if args.full
                         else ([1, 32, 128], [4096, 32768]))
    points = [(h, kv, b, c) for h in (16, 128) for kv in ("bf16", "fp8") for b in batches for c in contexts]
    _warm(points, fi, sms)

    from ds_plugin.kernels.mla_decode import (_mla_decode_part_bf16, _mla_decode_part_fp8, mla_decode,
                                              mla_decode_num_splits)

    _set_allocator()
    blocks = max(batches) * max(contexts) // PAGE
    torch.manual_seed(0)
    caches = {kv: _cache(kv, blocks) for kv in ("bf16", "fp8")}
    vnames = list(VARIANTS)
    head = (f"{'H':>4} {'kv':>4} {'B':>4} {'ctx':>6} {'spl':>3} {'pick':>10} {'ours_us':>8} {'GB/s':>6} "
            f"{'TFLOP/s':>7} {'of_copy':>7} {'of_mm':>5} " + "".join(f"{b + '_us':>8} " for b in fi)
            + f"{'vs_peer':>7} " + "".join(f"{v + '_us':>8} " for v in vnames) + f"{'vdiff':>8} {'pdiff':>8}")
    print(head, flush=True)
    rows = []
    for heads, kv, batch, ctx in points:
        cache, k_scale = caches[kv]
        pages = ctx // PAGE
        kv_bytes = batch * ctx * DIM * (2 if kv == "bf16" else 1)
        flops = batch * heads * ctx * (2 * DIM + 2 * RANK)
        n_rot = max(1, min(32, math.ceil(256e6 / kv_bytes), blocks // (batch * pages)))
        tables = torch.randperm(blocks, device="cuda")[:n_rot * batch * pages].view(n_rot, batch, pages).int()
        seq = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
        q = torch.randn(batch, 1, heads, DIM, device="cuda").to(torch.bfloat16)
        splits = mla_decode_num_splits(batch, heads, ctx, sms)
        ws = torch.empty(batch * heads * splits * (RANK + 1), device="cuda")
        out = torch.empty(batch, 1, heads, RANK, dtype=torch.bfloat16, device="cuda")
        lse = torch.empty(batch, 1, heads, device="cuda")
        us, ref, pick = {}, None, "-"
        for name, cfg in _configs(heads, kv):
            def ours(cfg=cfg):
                for t in tables:
                    mla_decode(q, cache, t, seq, DIM**-0.5, RANK, k_scale=k_scale, num_splits=splits,
                               out=out, lse=lse, workspace=ws, config=cfg)
            try:
                us[name] = time_graph(ours)[0] / n_rot * 1e3
            except Exception as e:  # noqa: BLE001 - a variant that fails here leaves its cell
                print(f"# {name} at H={heads} {kv} B={batch} ctx={ctx}: {type(e).__name__}: {str(e)[:160]}")
                continue
            if name == "ours":
                ref = out.float().clone()
                tuner = _mla_decode_part_fp8 if kv == "fp8" else _mla_decode_part_bf16
                pick = _pick_name(tuner.best_config)
            elif ref is not None:
                us[name + "_diff"] = (out.float() - ref).abs().max().item()
        vdiff = max([us.get(v + "_diff", 0.0) for v in vnames], default=0.0)
        pdiff = []
        for b in fi:
            try:
                run, fo = flashinfer_runner(b, q, cache, tables, seq, DIM**-0.5, k_scale)
                t, graphed = time_graph(run)
                us[b] = t / n_rot * 1e3
                us[b + "_graphed"] = graphed
                pdiff.append((fo.float() - ref.view_as(fo)).abs().max().item())
            except Exception as e:  # noqa: BLE001 - a failing peer leaves its cell empty
                print(f"# {b} at H={heads} {kv} B={batch} ctx={ctx}: {type(e).__name__}: {str(e)[:200]}")
        t = us.get("ours", float("nan"))
        peer = min([us[b] for b in fi if b in us], default=float("nan"))
        row = {"H": heads, "kv": kv, "B": batch, "ctx": ctx, "splits": splits, "pick": pick, "ours_us": t,
               "gbs": kv_bytes / t / 1e3, "tflops": flops / t / 1e6, "of_copy": kv_bytes / t * 1e6 / ceil["copy"],
               "of_mm": flops / t * 1e6 / ceil["mm"], **{b + "_us": us.get(b, float("nan")) for b in fi},
               "vs_peer": peer / t, **{v + "_us": us.get(v, float("nan")) for v in vnames},
               "vdiff": vdiff, "pdiff": max(pdiff, default=0.0)}
        rows.append(row)
        print(f"{heads:>4} {kv:>4} {batch:>4} {ctx:>6} {splits:>3} {pick:>10} {t:>8.1f} {row['gbs']:>6.0f} "
              f"{row['tflops']:>7.1f} {row['of_copy']:>7.2f} {row['of_mm']:>5.2f} "
              + "".join(f"{us.get(b, float('nan')):>7.1f}{' ' if us.get(b + '_graphed', True) else 'e'} "
                        for b in fi)
              + f"{row['vs_peer']:>7.2f} " + "".join(f"{us.get(v, float('nan')):>8.1f} " for v in vnames)
              + f"{vdiff:>8.1e} {row['pdiff']:>8.1e}", flush=True)
    summary(rows, fi)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(",".join(rows[0]) + "\n")
            f.writelines(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    print(f"# peer cells marked e were timed eagerly (no graph capture); total wall {time.time() - t_start:.0f} s")


def summary(rows, fi) -> None:
    """The issue's goals, each as measured in this run."""
    at = {(r["H"], r["kv"], r["B"], r["ctx"]): r for r in rows}
    print("\n# goals (issue 15), this run:")
    for (h, kv, b, c), r in sorted(at.items()):
        if h == 16 and kv == "fp8" and b >= 32 and (h, "bf16", b, c) in at:
            bf = at[(h, "bf16", b, c)]["ours_us"]
            ptx = r.get("ptx_us", float("nan"))
            print(f"#  1 fp8/bf16 time, 16 heads B={b} ctx={c}: default {r['ours_us'] / bf:.2f}, ptx {ptx / bf:.2f}"
                  " (goal <= 0.6)")
    for (h, kv, b, c), r in sorted(at.items()):
        if h == 16 and kv == "bf16" and b >= 32:
            fa3 = r.get("fa3_us", float("nan"))
            print(f"#  2 16 heads bf16 B={b} ctx={c}: {r['of_copy']:.2f} of copy (goal >= 0.85), "
                  f"fa3/ours {fa3 / r['ours_us']:.2f} (goal >= 0.91)")
    for (h, kv, b, c), r in sorted(at.items()):
        if h == 128 and kv == "bf16" and b >= 32:
            fa3 = r.get("fa3_us", float("nan"))
            tma = r.get("tma_us", float("nan"))
            print(f"#  3 128 heads bf16 B={b} ctx={c}: {r['tflops']:.0f} TFLOP/s, "
                  f"tma {r['tflops'] * r['ours_us'] / tma:.0f} (goal >= 330), "
                  f"fa3/ours {fa3 / r['ours_us']:.2f} (goal >= 0.65)")
    for (h, kv, b, c), r in sorted(at.items()):
        if b == 1 and (h, kv, c) in PREVIOUS_B1_US:
            print(f"#  4 batch 1 H={h} {kv} ctx={c}: {r['ours_us']:.1f} us vs {PREVIOUS_B1_US[(h, kv, c)]} before "
                  f"(2026-11-29)" + "".join(f", {b_} {r.get(b_ + '_us', float('nan')):.1f}" for b_ in fi))


if __name__ == "__main__":
    sys.exit(main())
