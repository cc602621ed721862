"""MLA decode: every adapter of ds-plugin's backend family that imports here, side by side.

Shapes: DeepSeek-V3 per-GPU decode, 16 query heads (TP8) and 128 (DP attention), batch
{1, 8, 32, 64, 128}, context {1k, 4k, 16k, 32k}, BF16 and FP8 latent cache (576 values a token,
pages of 64), one query token. Every adapter runs through the family's own entry points
(`plan` on the host, then `decode`), exactly as the engine calls them; no vLLM needed.

Timing: GPU time of one call with L2 cold (decode reads KV that is not in cache) and no host
overhead: a CUDA graph of R x (flush a 256 MB buffer, decode) minus a graph of R x (flush),
median of replays. (The first H200 run used do_bench's eager calls: small shapes then timed
the host's launch path, not the GPU.) Each adapter is built per context length, so Triton's
split count (sized for the longest length a graph may replay with) is that context's, as in
E.1. `host_us` is the host time of one eager call (what an eagerly run adapter costs the CPU
per layer). Columns: time, GB/s on the KV bytes, TFLOP/s, the
fraction of the ceiling that bounds the shape (measured copy bandwidth, read + write, under the
ridge point; the bf16 matmul rate above it) and the ratio of the fastest adapter's time to this
one's (1.00 = fastest on the row). `maxdiff` is the largest |out - first adapter's out|: a
garbage kernel cannot post a fast time unnoticed. The end prints the default-selection rows
(ds_plugin/attention/mla_family.py DEFAULTS) that the measurements support.

Usage: PYTHONPATH=. python benchmarks/bench_mla_adapters.py [--quick] [--csv out.csv]
       [--adapters triton,flashinfer-fa3,...]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import triton

from ds_plugin.attention.mla_family import (ADAPTERS, DecodeSpec, MLAKernelUnavailable,
                                            adapter_class, platform_of)

RANK, ROPE, PAGE = 512, 64, 64
DIM = RANK + ROPE


def ceilings() -> tuple[float, float]:
    """(copy bandwidth in B/s counting read + write, bf16 matmul FLOP/s), measured here."""
    src = torch.randn(1024**3 // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
    copy_bw = 2 * src.numel() * 2 / (ms * 1e-3)
    src = dst = None  # free the 2 GB before the matmul buffers
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ b, warmup=20, rep=100, return_mode="median")
    return copy_bw, 2 * 8192**3 / (ms * 1e-3)


FLUSH = None


def graph_time(fn, reps: int = 8, replays: int = 7) -> float:
    """Seconds per call of fn on the GPU, L2 flushed before each call, host overhead excluded."""
    global FLUSH  # noqa: PLW0603 - one flush buffer per process, made on first use
    if FLUSH is None:
        FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def capture(with_fn):
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the graph (allocator, lazy inits)
                FLUSH.zero_()
                if with_fn:
                    fn()
            torch.cuda.synchronize()
            with torch.cuda.graph(g, stream=stream):
                for _ in range(reps):
                    FLUSH.zero_()
                    if with_fn:
                        fn()
        torch.cuda.synchronize()
        return g

    def replay_ms(g):
        times = []
        for _ in range(replays):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    both, flush = capture(True), capture(False)
    return max(replay_ms(both) - replay_ms(flush), 1e-6) / reps * 1e-3


def host_time(fn, calls: int = 20) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls


def build_adapters(names, heads, kv, max_seq_len):
    built, refused = {}, {}
    for name in names:
        cls = adapter_class(name)
        spec = DecodeSpec(num_heads=heads, scale=DIM**-0.5, page_size=PAGE, kv_dtype=kv,
                          device=torch.device("cuda"), max_seq_len=max_seq_len)
        try:
            built[name] = cls(spec)
        except MLAKernelUnavailable as exc:
            refused[name] = str(exc)
    return built, refused


def default_rows(rows, plat):
    """Per KV dtype: adapters ordered by the geometric mean of (best time / their time)."""
    out = []
    for kv in ("bf16", "fp8"):
        scores: dict[str, list[float]] = {}
        for r in rows:
            if r["kv"] == kv and math.isfinite(r["us"]):
                scores.setdefault(r["adapter"], []).append(math.log(r["vs_best"]))
        full = max((len(v) for v in scores.values()), default=0)
        ranked = sorted((a for a, v in scores.items() if len(v) == full),
                        key=lambda a: -sum(scores[a]) / full)
        if ranked:
            geo = {a: math.exp(sum(scores[a]) / full) for a in ranked}
            out.append((kv, ranked, geo, full))
    for kv, ranked, geo, full in out:
        order = tuple(ranked) + (() if "triton" in ranked else ("triton",))
        text = ", ".join(f"{a} {geo[a]:.2f}" for a in ranked)
        print(f'    DefaultRow("{plat}", "{kv}", {order!r},\n'
              f'               "{torch.cuda.get_device_name()} {time.strftime("%Y-%m-%d")}, '
              f'page {PAGE}, geomean of best/own time over {full} shapes: {text}"),')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--adapters", default=",".join(n for n in ADAPTERS if n != "torch"))
    args = ap.parse_args()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy_bw, mm_rate = ceilings()
    ridge = mm_rate / copy_bw
    print(f"# {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# measured ceilings: copy {copy_bw / 1e12:.2f} TB/s (read+write), bf16 mm "
          f"{mm_rate / 1e12:.0f} TFLOP/s, ridge {ridge:.0f} FLOP/B")
    names = [n.strip() for n in args.adapters.split(",") if n.strip()]
    batches, contexts = (([1, 32, 128], [1024, 32768]) if args.quick
                         else ([1, 8, 32, 64, 128], [1024, 4096, 16384, 32768]))
    blocks = max(batches) * max(contexts) // PAGE
    cache_bf16 = torch.randn(blocks, PAGE, DIM, dtype=torch.bfloat16, device="cuda")
    k_scale = torch.tensor([cache_bf16.abs().amax().item() / 448], device="cuda")
    cache_fp8 = (cache_bf16.float() / k_scale).to(torch.float8_e4m3fn)
    rows, announced = [], set()
    print(f"{'H':>4} {'kv':>4} {'B':>4} {'ctx':>6} {'adapter':>22} {'us':>9} {'GB/s':>6} "
          f"{'TFLOP/s':>7} {'bound':>5} {'of_ceil':>7} {'vs_best':>7} {'maxdiff':>8} {'host_us':>7}")
    for heads in (16, 128):
        for kv in ("bf16", "fp8"):
            cache = cache_bf16 if kv == "bf16" else cache_fp8
            scale = k_scale if kv == "fp8" else None
            elem = 2 if kv == "bf16" else 1
            for ctx in contexts:
                adapters, refused = build_adapters(names, heads, kv, ctx)
                for name, why in refused.items():
                    if (name, kv) not in announced:
                        print(f"# not timed, {kv}: {why}")
                        announced.add((name, kv))
                for batch in batches:
                    pages = ctx // PAGE
                    perm = torch.randperm(blocks, device="cuda")[:batch * pages]
                    table = perm.view(batch, pages).int()
                    seq = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
                    q = torch.randn(batch, 1, heads, DIM, dtype=torch.bfloat16, device="cuda")
                    kv_bytes = batch * ctx * DIM * elem
                    flops = batch * heads * ctx * (2 * DIM + 2 * RANK)
                    bound = "mem" if flops / kv_bytes < ridge else "mma"
                    shape_rows, first = [], None
                    for name, ad in adapters.items():
                        try:
                            plan = ad.plan(table, seq, 1, longest=ctx)
                            out, _ = ad.decode(q, cache, table, seq, plan=plan, k_scale=scale)
                            torch.cuda.synchronize()
                            diff = 0.0 if first is None else (out.float() - first).abs().max().item()
                            first = out.float() if first is None else first

                            def call():
                                ad.decode(q, cache, table, seq, plan=plan, k_scale=scale)

                            try:
                                t = graph_time(call)
                            except Exception as exc:  # noqa: BLE001 - timed eagerly instead
                                print(f"# {name}: not capturable ({type(exc).__name__}: "
                                      f"{str(exc)[:120]}); this row is eager do_bench time")
                                t = triton.testing.do_bench(call, warmup=5, rep=40,
                                                            return_mode="median") * 1e-3
                            host = host_time(call)
                        except Exception as exc:  # noqa: BLE001 - one failing row is reported
                            print(f"# {name} H{heads} {kv} B{batch} ctx{ctx}: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}")
                            t, diff, host = float("nan"), float("nan"), float("nan")
                        shape_rows.append(dict(
                            H=heads, kv=kv, B=batch, ctx=ctx, adapter=name, us=t * 1e6,
                            gbs=kv_bytes / t / 1e9, tflops=flops / t / 1e12, bound=bound,
                            of_ceil=(kv_bytes / t / copy_bw) if bound == "mem" else (flops / t / mm_rate),
                            maxdiff=diff, host_us=host * 1e6))
                    best = min((r["us"] for r in shape_rows if math.isfinite(r["us"])),
                               default=float("nan"))
                    for r in shape_rows:
                        r["vs_best"] = best / r["us"]
                        print(f"{heads:>4} {kv:>4} {batch:>4} {ctx:>6} {r['adapter']:>22} "
                              f"{r['us']:>9.1f} {r['gbs']:>6.0f} {r['tflops']:>7.1f} {bound:>5} "
                              f"{r['of_ceil']:>7.2f} {r['vs_best']:>7.2f} {r['maxdiff']:>8.2g} "
                              f"{r['host_us']:>7.0f}", flush=True)
                    rows.extend(shape_rows)
                del adapters
    print("# default-selection rows these measurements support (mla_family.DEFAULTS):")
    default_rows(rows, platform_of(torch.device("cuda")))
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(",".join(rows[0]) + "\n")
            for r in rows:
                f.write(",".join(str(v) for v in r.values()) + "\n")


if __name__ == "__main__":
    sys.exit(main())
