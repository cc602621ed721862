"""Block-FP8 dense GEMM on DeepSeek-V3 shapes: ours vs torch blockwise scaled_mm vs bf16.

Run on a GPU: `PYTHONPATH=. python benchmarks/bench_fp8_gemm.py [--sweep]`. Prints one
table row per (N, K, M): time, TFLOP/s, GB/s and the ratios the issue sets goals on.
Weights rotate over enough copies to exceed L2, so small shapes measure HBM, not cache.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _fp8_common import (CEIL_BF16_TFLOPS, CEIL_COPY_TBS, CEIL_FP8_BLOCKWISE_TFLOPS,
                         copy_bandwidth_tbs, time_ms, torch_blockwise_mm)
from ds_plugin.kernels.fp8_gemm import GemmConfig, fp8_block_gemm_nt, gemm_config
from ds_plugin.kernels.fp8_quant import fp8_act_quant
from ds_plugin.kernels.fp8_format import ceil_div
from ds_plugin.kernels.ref_fp8 import random_fp8_weight

SHAPES = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
MS = [1, 16, 64, 128, 512, 4096]
ROTATE_BYTES = 256 << 20  # > 5x the H200's 50 MB L2

SWEEP = {  # alternatives tried with --sweep, per M bucket
    "small": [GemmConfig(16, 32, 4, 4, s) for s in (4, 8, 16)] + [GemmConfig(16, 128, 4, 4, 4)],
    "large": [GemmConfig(128, 256, 8, 3), GemmConfig(128, 128, 4, 4), GemmConfig(64, 256, 4, 4),
              GemmConfig(128, 128, 8, 4)],
}


def _per_call(fns):
    return lambda: [f() for f in fns]


def bench_shape(n, k, m, sweep, sms):
    copies = max(1, min(16, ROTATE_BYTES // (n * k)))
    ws = [random_fp8_weight((n, k), "cuda") for _ in range(copies)]
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    aq, as_ = fp8_act_quant(x)
    row = {"n": n, "k": k, "m": m}

    row["ours"] = time_ms(_per_call([lambda w=w: fp8_block_gemm_nt(aq, as_, *w) for w in ws])) / copies
    row["quant"] = time_ms(lambda: fp8_act_quant(x))
    try:
        runs = [torch_blockwise_mm(aq, as_, *w, expected=fp8_block_gemm_nt(aq, as_, *w))
                for w in ws]
        row["torch"], row["torch_note"] = time_ms(_per_call(runs)) / copies, ""
    except Exception as e:  # noqa: BLE001 - report why torch's path is absent
        row["torch"], row["torch_note"] = float("nan"), str(e).splitlines()[0][:60]
    wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(1, copies // 2))]
    row["bf16"] = time_ms(_per_call([lambda w=w: x @ w.t() for w in wb])) / len(wb)
    del wb
    if sweep:
        bucket = "small" if m <= 64 else "large"
        best = (row["ours"], gemm_config(m, n, k, sms))
        for cfg in SWEEP[bucket]:
            try:
                t = time_ms(_per_call([lambda w=w: fp8_block_gemm_nt(aq, as_, *w, config=cfg)
                                       for w in ws])) / copies
            except Exception:  # noqa: BLE001 - a config that does not fit this chip
                continue
            best = min(best, (t, cfg), key=lambda p: p[0])
        row["best"], row["best_cfg"] = best
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sweep", action="store_true", help="also time alternative tiles")
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    copy = copy_bandwidth_tbs()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy:.2f} TB/s "
          f"(brief: {CEIL_COPY_TBS}), ceilings: bf16 {CEIL_BF16_TFLOPS}, fp8 blockwise "
          f"{CEIL_FP8_BLOCKWISE_TFLOPS} TFLOP/s")
    hdr = ("| N x K | M | ours us | TFLOP/s | GB/s | w-bytes/copy | torch-bw us | torch/ours time | "
           "bf16 us | bf16/ours time | act-quant us |" + (" best sweep us (cfg) |" if args.sweep else ""))
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for n, k in SHAPES:
        for m in MS:
            r = bench_shape(n, k, m, args.sweep, sms)
            t = r["ours"] * 1e-3
            flops = 2 * m * n * k
            byts = n * k + 4 * ceil_div(n, 128) * ceil_div(k, 128) + m * k + 2 * m * n
            line = (f"| {n}x{k} | {m} | {r['ours'] * 1e3:.1f} | {flops / t / 1e12:.0f} | "
                    f"{byts / t / 1e9:.0f} | {n * k / t / 1e12 / copy:.2f} | "
                    f"{r['torch'] * 1e3:.1f} {r['torch_note']} | {r['torch'] / r['ours']:.2f} | "
                    f"{r['bf16'] * 1e3:.1f} | {r['bf16'] / r['ours']:.2f} | {r['quant'] * 1e3:.1f} |")
            if args.sweep:
                c = r["best_cfg"]
                line += (f" {r['best'] * 1e3:.1f} ({c.block_m}x{c.block_n} w{c.num_warps} "
                         f"s{c.num_stages} k{c.split_k}) |")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
