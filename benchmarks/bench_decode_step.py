"""One DeepSeek-V3 decode step per layer on one H200, as one rank of 8xH200 runs it, and what it
projects for the whole model (issue 17).

    PYTHONPATH=. python benchmarks/bench_decode_step.py [--quick] [--json OUT.json]

For each layout (TP8; DP-attention + EP8: see decode_layer.Layout), batch 1/8/32/128 and
context 4k/32k, every layer variant of decode_layer.layer_variants is captured as ONE CUDA graph
and its replays are timed (median of several rounds, L2 not flushed: a real step streams 61
layers' weights, so one layer's weights do not stay in L2 across replays either); our layer's
parts are captured and timed alone too, for their shares. Then one prefill chunk of 8192 new
tokens, with and without a 24k cached prefix, through our layer's linears, attention (SDPA on
decompressed K/V, what vLLM's FA prefill computes) and experts, with the routed experts beside
torch._scaled_grouped_mm (rowwise FP8) and bf16 torch._grouped_mm on the same routed tokens.
The per-layer times go to project_8xh200.py, which prints the 8xH200 projection.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import decode_layer as L  # noqa: E402
import project_8xh200  # noqa: E402


def graph_time_us(fn, reps: int = 20, rounds: int = 5) -> float:
    """Median over rounds of the mean replay time of `fn` captured in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()  # warm: compiles, autotunes, plans outside the graph
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return statistics.median(times)


def eager_time_us(fn, reps: int = 5) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) * 1e6 / reps


def smoke_time_us(fn, **_) -> float:
    """--smoke (CPU): one eager call, to run every Python path of the script quickly."""
    return eager_time_us(fn, reps=1)


def flashinfer_name() -> str | None:
    from ds_plugin.attention.mla_family import DecodeSpec, adapter_class

    spec = DecodeSpec(num_heads=16, scale=L.SOFTMAX_SCALE, page_size=64, kv_dtype="bf16",
                      device=torch.device("cuda"))
    cls = adapter_class("flashinfer-fa3")
    why = cls.refusal(spec)
    if why:
        print(f"# FlashInfer fa3 not used: {why}")
        return None
    return "flashinfer-fa3"


def decode_rows(layouts, batches, contexts, kv: str, fi: str | None, device="cuda",
                timer=graph_time_us, mla="triton") -> list[dict]:
    rows = []
    for layout in layouts:
        for ctx in contexts:
            for b in batches:
                st = L.build(layout, b, ctx, kv, device, page=64 if device == "cuda" else 16)
                variants = L.layer_variants(st, fi, mla)
                row = {"layout": layout.name, "batch": b, "context": ctx, "kv": kv, "us": {}}
                for name, layer in variants.items():
                    try:
                        row["us"][name] = timer(layer.step)
                    except Exception as e:  # noqa: BLE001 - reported, the grid goes on
                        row["us"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
                row["ours"] = f"ours ({mla} MLA)" if fi is None else f"ours ({fi} MLA)"
                ours = variants[row["ours"]]
                row["parts"] = {n: timer(p) for n, p in ours.parts}
                peer = [v for k, v in variants.items() if k.startswith("peers")]
                if peer and peer[0].linear.refused:
                    row["cublas_refused"] = sorted(peer[0].linear.refused)
                rows.append(row)
                del st, variants
                torch.cuda.empty_cache()
                _print_row(row)
    return rows


def _print_row(row: dict) -> None:
    us = row["us"]
    ours = us[row["ours"]]
    cells = []
    for name, t in us.items():
        cells.append(f"{name}: {t:.1f} us ({ours / t:.2f}x ours)" if isinstance(t, float)
                     else f"{name}: {t}")
    total = sum(row["parts"].values())
    parts = ", ".join(f"{n} {t:.1f} ({t / total:.0%})" for n, t in row["parts"].items())
    print(f"| {row['layout']} | {row['batch']} | {row['context']} | {row['kv']} | "
          + " | ".join(cells) + f" | parts: {parts} |", flush=True)


def prefill_rows(layouts, tokens: int, prefixes, device="cuda", timer=eager_time_us) -> list[dict]:
    import prefill_chunk as P

    rows = []
    for layout in layouts:
        for prefix in prefixes:
            row = P.measure(layout, tokens, prefix, timer, device)
            rows.append(row)
            print(f"| prefill {layout.name} | {tokens} new + {prefix} cached | "
                  + " | ".join(f"{k}: {v:.0f} us" if isinstance(v, float) else f"{k}: {v}"
                               for k, v in row["us"].items()) + " |", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 and 32, context 4k only")
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--json", type=Path, help="write every measured figure here")
    ap.add_argument("--mtp-accept", type=float, default=None,
                    help="mean accepted length per step with MTP (default: SGLang's published 2.8)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny sizes, eager: checks the script's paths, times nothing real")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    if args.smoke:
        return smoke()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    for layout in (L.TP8, L.DPEP8):
        print(f"# {layout.name}: {layout.what}")
    fi = flashinfer_name()
    batches, contexts = ([1, 32], [4096]) if args.quick else ([1, 8, 32, 128], [4096, 32768])
    print("| layout | batch | context | kv | variants (per layer) | our parts |\n|---|---|---|---|---|---|")
    rows = decode_rows((L.TP8, L.DPEP8), batches, contexts, "bf16", fi)
    pre = [] if args.no_prefill else prefill_rows((L.TP8, L.DPEP8), 8192, (0, 24576))
    extra = project_8xh200.measure_extras(eager_time_us, graph_time_us)
    report = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "decode": rows, "prefill": pre, "extras": extra}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print()
    project_8xh200.print_projection(report, mtp_accept=args.mtp_accept)
    print(f"# total wall {time.time() - t0:.0f} s")
    return 0


def smoke() -> int:
    tiny = L.Dims(hidden=256, q_lora=128, experts=16, top_k=4, n_group=4, topk_group=2,
                  moe_inter=256, heads=16)
    layouts = (L.Layout("TP8", ep=False, dims=tiny, ranks=2),
               L.Layout("DP-attn+EP8", ep=True, dims=tiny, ranks=2))
    rows = decode_rows(layouts, [1, 4], [64], "bf16", None, device="cpu", timer=smoke_time_us,
                       mla="torch")
    pre = prefill_rows(layouts, 32, (0, 16), device="cpu", timer=smoke_time_us)
    report = {"device": "cpu (smoke)", "date": time.strftime("%Y-%m-%d"), "decode": rows,
              "prefill": pre, "extras": {b: {"lm_head": 1.0, "sample": 1.0, "dense_mlp_tp8": 1.0}
                                        for b in (1, 4)}}
    project_8xh200.print_projection(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
