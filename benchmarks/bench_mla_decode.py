"""MLA decode on DeepSeek-V3 per-GPU shapes: ours vs FlashInfer (fa3, fa2) vs naive torch.

Shapes: 16 query heads (TP8) and 128 (DP attention), batch {1, 8, 32, 64, 128}, context {1k, 4k,
16k, 32k}, BF16 and FP8 latent cache (576 values per token, block size 64), one query token.
For each: time (median of CUDA-graph replays), GB/s on the KV bytes, TFLOP/s, and the fraction of
the ceiling that bounds the shape: the measured copy bandwidth (read + write of a large
device-to-device copy) when the shape's FLOP/byte is under the ridge point, else the measured
bf16 matmul rate. Small caches fit in L2, so each timed call walks several disjoint page sets
(>= 256 MB of KV in all) and the time is per call. FlashInfer's `BatchMLAPagedAttentionWrapper`
(`fa3` and `fa2` backends) runs on the BF16 rows over the same pages when it imports; "vs fa3" is
its time over ours (> 1: ours faster).

Usage: PYTHONPATH=. python benchmarks/bench_mla_decode.py [--quick] [--csv out.csv]
(benchmarks/sweep_mla_decode.py times fixed kernel variants against each other.)
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
import triton
from _mla_common import DIM, PAGE, RANK, flashinfer_backends, flashinfer_runner, time_graph

from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits


def ceilings() -> tuple[float, float]:
    """(copy bandwidth in B/s counting read + write, bf16 matmul FLOP/s), measured here."""
    src = torch.randn(2 * 1024**3 // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=20, rep=200, return_mode="median")
    copy_bw = 2 * src.numel() * 2 / (ms * 1e-3)
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ b, warmup=20, rep=200, return_mode="median")
    return copy_bw, 2 * 8192**3 / (ms * 1e-3)


def naive_decode(q, latent, scale):
    """bmm-softmax-bmm over a contiguous [B, L, 576] latent (no paging): the torch baseline."""
    s = torch.bmm(q, latent.transpose(1, 2)).float() * scale
    p = torch.softmax(s, dim=-1).to(q.dtype)
    return torch.bmm(p, latent[..., :RANK])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy_bw, mm_rate = ceilings()
    ridge = mm_rate / copy_bw
    print(f"# {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}")
    print(f"# measured ceilings: copy {copy_bw / 1e12:.2f} TB/s (read+write), bf16 mm "
          f"{mm_rate / 1e12:.0f} TFLOP/s, ridge {ridge:.0f} FLOP/B")
    fi, why = flashinfer_backends()
    print(f"# FlashInfer: {', '.join(fi) if fi else 'not timed (' + why + ')'}")

    batches, contexts = ([1, 32, 128], [1024, 32768]) if args.quick else ([1, 8, 32, 64, 128],
                                                                         [1024, 4096, 16384, 32768])
    max_tokens = max(batches) * max(contexts)
    blocks = max_tokens // PAGE
    cache_bf16 = torch.randn(blocks, PAGE, DIM, dtype=torch.bfloat16, device="cuda")
    k_scale = torch.tensor([cache_bf16.abs().amax().item() / 448], device="cuda")
    cache_fp8 = (cache_bf16.float() / k_scale).to(torch.float8_e4m3fn)
    fi_cache = (cache_bf16[..., :RANK].contiguous(), cache_bf16[..., RANK:].contiguous()) if fi else ()
    rows = []
    header = (f"{'H':>4} {'kv':>4} {'B':>4} {'ctx':>6} {'spl':>3} {'ours_us':>9} {'GB/s':>6} "
              f"{'TFLOP/s':>7} {'bound':>5} {'of_ceil':>7} {'naive_us':>9} {'nGB/s':>6} {'speedup':>7}"
              f" {'fa3_us':>8} {'fa2_us':>8} {'vs_fa3':>6}")
    print(header)
    for heads in (16, 128):
        for kv in ("bf16", "fp8"):
            cache = cache_bf16 if kv == "bf16" else cache_fp8
            elem = 2 if kv == "bf16" else 1
            for batch in batches:
                for ctx in contexts:
                    pages = ctx // PAGE
                    kv_bytes = batch * ctx * DIM * elem
                    flops = batch * heads * ctx * (2 * DIM + 2 * RANK)
                    n_rot = max(1, min(32, math.ceil(256e6 / kv_bytes), blocks // (batch * pages)))
                    perm = torch.randperm(blocks, device="cuda")[:n_rot * batch * pages]
                    tables = perm.view(n_rot, batch, pages).int()
                    seq = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
                    q = torch.randn(batch, 1, heads, DIM, dtype=torch.bfloat16, device="cuda")
                    splits = mla_decode_num_splits(batch, heads, ctx, props.multi_processor_count)
                    ws = torch.empty(batch * heads * splits * (RANK + 1), device="cuda")
                    out = torch.empty(batch, 1, heads, RANK, dtype=torch.bfloat16, device="cuda")
                    lse = torch.empty(batch, 1, heads, device="cuda")

                    def ours():
                        for t in tables:
                            mla_decode(q, cache, t, seq, DIM**-0.5, RANK, k_scale=k_scale,
                                       num_splits=splits, out=out, lse=lse, workspace=ws)

                    t_ours = time_graph(ours) / n_rot * 1e-3
                    # Naive: contiguous latents of the first page set; skip when the fp32 score
                    # tensor would not fit comfortably.
                    t_naive = float("nan")
                    if batch * heads * ctx * 4 <= 4e9 and kv == "bf16":
                        latent = cache[tables[0].long()].view(batch, ctx, DIM)
                        qn = q.view(batch, heads, DIM)
                        t_naive = time_graph(lambda: naive_decode(qn, latent, DIM**-0.5)) * 1e-3
                        del latent
                    t_fi = {}
                    for backend in fi if kv == "bf16" else []:
                        try:
                            run, _ = flashinfer_runner(backend, q, *fi_cache, tables, seq, heads)
                            t_fi[backend] = time_graph(run) / n_rot * 1e-3
                        except Exception as e:  # noqa: BLE001 - a failing peer leaves its cell empty
                            print(f"# {backend} failed at H={heads} B={batch} ctx={ctx}: {type(e).__name__}: {e}")
                    fa3, fa2 = t_fi.get("fa3", float("nan")), t_fi.get("fa2", float("nan"))
                    intensity = flops / kv_bytes
                    bound = "mem" if intensity < ridge else "mma"
                    of_ceil = (kv_bytes / t_ours / copy_bw) if bound == "mem" else (flops / t_ours / mm_rate)
                    row = dict(H=heads, kv=kv, B=batch, ctx=ctx, splits=splits, ours_us=t_ours * 1e6,
                               gbs=kv_bytes / t_ours / 1e9, tflops=flops / t_ours / 1e12, bound=bound,
                               of_ceil=of_ceil, naive_us=t_naive * 1e6,
                               naive_gbs=kv_bytes / t_naive / 1e9, speedup=t_naive / t_ours,
                               fa3_us=fa3 * 1e6, fa2_us=fa2 * 1e6, vs_fa3=fa3 / t_ours)
                    rows.append(row)
                    print(f"{heads:>4} {kv:>4} {batch:>4} {ctx:>6} {splits:>3} {row['ours_us']:>9.1f} "
                          f"{row['gbs']:>6.0f} {row['tflops']:>7.1f} {bound:>5} {of_ceil:>7.2f} "
                          f"{row['naive_us']:>9.1f} {row['naive_gbs']:>6.0f} {row['speedup']:>7.2f} "
                          f"{row['fa3_us']:>8.1f} {row['fa2_us']:>8.1f} {row['vs_fa3']:>6.2f}", flush=True)
    from ds_plugin.kernels.mla_decode import _mla_decode_part_tuned

    names = _mla_decode_part_tuned.keys
    for key, cfg in _mla_decode_part_tuned.cache.items():
        print(f"# autotune pick {dict(zip(names, key))}: {cfg}")
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(",".join(rows[0]) + "\n")
            for r in rows:
                f.write(",".join(str(v) for v in r.values()) + "\n")


if __name__ == "__main__":
    sys.exit(main())
