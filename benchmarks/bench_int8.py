"""INT8 (w8a8_int8 per channel, blockwise_int8) on DeepSeek-V3 shapes, side by side with bf16
cuBLAS, torch._int_mm (cuBLASLt int8, plus the scale epilogue) and our FP8 path.

Run on a GPU from the repository root (bounded to about 90 s on an H200 by --budget):
    PYTHONPATH=. python benchmarks/bench_int8.py

Dense rows: one (N, K) linear of DeepSeek-V3 at batch M, the whole served step (activation
quantization included) for ours and FP8; cuBLAS bf16 is `x @ w.T`; `int_mm` is torch._int_mm
on our quantized activations with the per-channel scales applied after (n/a where torch
refuses the shape, e.g. M <= 16). MoE rows: the fused routed-experts layer, E = 256, top-8,
hidden 7168, intermediate 2048, INT8 channel / block vs our FP8 fused MoE on the same routing.
Every implementation's output is checked against the fp32 reference (calc_diff) before it is
timed; CUDA-graph replays (median); weights rotate over enough copies to exceed L2.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from _fp8_common import CEIL_BF16_TFLOPS, CEIL_COPY_TBS, copy_bandwidth_tbs, time_ms
from ds_plugin.kernels.fp8_format import calc_diff, dequant_block
from ds_plugin.kernels.fp8_linear import fp8_linear, torch_path_agrees
from ds_plugin.kernels.fp8_moe import fp8_fused_moe
from ds_plugin.kernels.int8_format import PER_TOKEN, dequant_act, dequant_weight
from ds_plugin.kernels.int8_gemm import int8_linear
from ds_plugin.kernels.int8_moe import int8_fused_moe
from ds_plugin.kernels.int8_quant import int8_act_quant
from ds_plugin.kernels.ref_fp8 import random_fp8_weight
from ds_plugin.kernels.ref_int8 import random_int8_weight

SHAPES = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
MS = [1, 128, 4096]
MOE_MS = [1, 64, 512]
H, I, E, TOP_K = 7168, 2048, 256, 8
DEV = "cuda"
ROTATE_BYTES = 256 << 20  # > 5x the H200's 50 MB L2
# The H200's dense int8 tensor-core rate equals its fp8 one on the spec sheet; until an int8
# ceiling is measured here, the measured blockwise-FP8 ceiling stands in for it.
CEIL_INT8_TFLOPS = 1141.0


def _rot(fns):
    return lambda: [f() for f in fns]


def _check(name, out, ref, budget=1e-3):
    d = calc_diff(out, ref)
    if d > budget:
        raise AssertionError(f"{name}: calc_diff {d:.2e} > {budget} against the fp32 reference")


def dense_row(n, k, m):
    copies = max(1, min(16, ROTATE_BYTES // (n * k)))
    x = torch.randn(m, k, device=DEV).to(torch.bfloat16)
    ref = None
    row = {}
    for blockwise, key in ((False, "ch"), (True, "blk")):
        ws = [random_int8_weight((n, k), DEV, blockwise) for _ in range(copies)]
        w, s = ws[0]
        ref = x.float() @ dequant_weight(w, s).t()
        _check(f"int8 {key} {n}x{k} M={m}", int8_linear(x, w, s), ref)
        row[key] = time_ms(_rot([lambda w=w: int8_linear(x, *w) for w in ws])) / copies
        if not blockwise:
            a, a_s = int8_act_quant(x, PER_TOKEN)
            try:
                def int_mm(w, s, a=a, a_s=a_s):
                    return (torch._int_mm(a, w.t()).float() * a_s * s.t()).to(torch.bfloat16)
                exact = dequant_act(a, a_s) @ dequant_weight(w, s).t()
                _check("torch._int_mm", int_mm(w, s), exact)
                row["int_mm"] = time_ms(_rot([lambda w=w: int_mm(*w) for w in ws])) / copies
                row["int_mm_raw"] = time_ms(_rot([lambda w=w: torch._int_mm(a, w[0].t())
                                                  for w in ws])) / copies
            except (RuntimeError, AssertionError) as e:
                row["int_mm"] = row["int_mm_raw"] = float("nan")
                row["int_mm_note"] = str(e).splitlines()[0][:40]
        del ws
    fws = [random_fp8_weight((n, k), DEV) for _ in range(copies)]
    ok = torch_path_agrees(fws[0][0], fws[0][1], torch.bfloat16)
    row["fp8"] = time_ms(_rot([lambda w=w: fp8_linear(x, *w, ok) for w in fws])) \
        / copies
    del fws
    wb = [torch.randn(n, k, device=DEV, dtype=torch.bfloat16) for _ in range(max(1, copies // 2))]
    row["bf16"] = time_ms(_rot([lambda w=w: x @ w.t() for w in wb])) / len(wb)
    return row


def moe_row(m, experts):
    g = torch.Generator(device=DEV).manual_seed(m)
    x = torch.randn(m, H, device=DEV, generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(m, E, device=DEV, generator=g).softmax(-1).topk(TOP_K)
    row = {}
    for key, (w13, s13, w2, s2) in experts.items():
        fn = int8_fused_moe if key != "fp8" else fp8_fused_moe
        if m == 1:  # one token: check against the layer's fp32 definition (cheap at M = 1)
            out = fn(x, tw, ids, w13, s13, w2, s2)
            ref = torch.zeros(1, H, device=DEV)
            deq = dequant_weight if key != "fp8" else dequant_block
            for j in range(TOP_K):
                e = int(ids[0, j])
                gu = x.float() @ deq(w13[e], s13[e]).t()
                act = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
                ref += float(tw[0, j]) * (act @ deq(w2[e], s2[e]).t())
            # Both quantize activations twice (int8 finer than e4m3): a sanity budget; a wrong
            # kernel is off by orders of magnitude.
            _check(f"moe {key}", out, ref, budget=5e-3)
        row[key] = time_ms(lambda fn=fn, w=(w13, s13, w2, s2): fn(x, tw, ids, *w))
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=80.0, help="stop adding rows after this "
                    "many seconds (the table says where it stopped)")
    args = ap.parse_args()
    t0 = time.time()
    copy = copy_bandwidth_tbs()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy:.2f} TB/s "
          f"(brief {CEIL_COPY_TBS}); ceilings bf16 {CEIL_BF16_TFLOPS}, int8 ~{CEIL_INT8_TFLOPS} "
          f"TFLOP/s")
    g = torch.Generator(device=DEV).manual_seed(0)
    experts = {}
    for key, blockwise in (("int8-ch", False), ("int8-blk", True)):
        experts[key] = (*random_int8_weight((E, 2 * I, H), DEV, blockwise, g),
                        *random_int8_weight((E, H, I), DEV, blockwise, g))
    experts["fp8"] = (*random_fp8_weight((E, 2 * I, H), DEV, g),
                      *random_fp8_weight((E, H, I), DEV, g))
    print(f"| MoE E={E} top-{TOP_K} | M | int8-ch us | int8-blk us | fp8 (ours) us | "
          f"fp8/int8-ch |")
    print("|---|---|---|---|---|---|")
    for m in MOE_MS:
        if time.time() - t0 > args.budget:
            print(f"# stopped at the {args.budget:.0f} s budget before MoE M={m}")
            break
        r = moe_row(m, experts)
        print(f"| {H}/{I} | {m} | {r['int8-ch'] * 1e3:.1f} | {r['int8-blk'] * 1e3:.1f} | "
              f"{r['fp8'] * 1e3:.1f} | {r['fp8'] / r['int8-ch']:.2f} |", flush=True)
    del experts
    torch.cuda.empty_cache()
    hdr = ("| N x K | M | int8-ch us | TFLOP/s (of ceil) | w-bytes/copy | int8-blk us | "
           "int_mm+scale us | int_mm raw us | fp8 (ours) us | bf16 cuBLAS us | bf16/int8-ch | "
           "fp8/int8-ch |")
    print("\n" + hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for n, k in SHAPES:
        for m in MS:
            if time.time() - t0 > args.budget:
                print(f"# stopped at the {args.budget:.0f} s budget before {n}x{k} M={m}")
                print(f"# total wall {time.time() - t0:.0f} s")
                return 0
            r = dense_row(n, k, m)
            t = r["ch"] * 1e-3
            print(f"| {n}x{k} | {m} | {r['ch'] * 1e3:.1f} | {2 * m * n * k / t / 1e12:.0f} "
                  f"({2 * m * n * k / t / 1e12 / CEIL_INT8_TFLOPS:.2f}) | "
                  f"{n * k / t / 1e12 / copy:.2f} | {r['blk'] * 1e3:.1f} | {r['int_mm'] * 1e3:.1f} "
                  f"{r.get('int_mm_note', '')} | {r['int_mm_raw'] * 1e3:.1f} | "
                  f"{r['fp8'] * 1e3:.1f} | {r['bf16'] * 1e3:.1f} | {r['bf16'] / r['ch']:.2f} | "
                  f"{r['fp8'] / r['ch']:.2f} |", flush=True)
    print(f"# total wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
