"""8xH200 decode projection from one H200's measured per-layer times (bench_decode_step.py).

    python benchmarks/project_8xh200.py RESULT.json [--mtp-accept 2.8]

The model, simple enough to check by hand, per decode step of a batch B on one rank:

    step = 3 x (attention part + dense MLP) + 58 x (MoE layer)      measured, per layer
         + LM head (vocab/8 per rank, bf16) + argmax sampling         measured
         + communication per layer                                    modelled, below
    TP8:        2 all-reduces of B x 7168 bf16 per layer
    DP+EP8:     dispatch (fp8 rows + scales) and combine (bf16 rows) of the B x 8 routed
                copies, 7/8 of them to other GPUs, once each per MoE layer
    one transfer of n bytes = ALPHA + n / LINK   (all-reduce: ring volume 2 (p-1)/p n)

with MTP (k draft tokens, mean accepted length A per step): a step verifies B(1+k) tokens
(the per-layer time at that batch, interpolated between measured batches) and runs the MTP
layer k times (one MoE layer + its eh_proj and the LM head); tokens per user per second =
A / step. TP8 serves B users per 8 GPUs; DP+EP8 serves 8B.

Left out: the scheduler and host work between steps (vLLM's CPU time per step), load
imbalance among experts and ranks (EP makes the slowest rank the step), prefill interference,
sampling beyond argmax, the embedding lookup (a gather of B rows), and any overlap of
communication with compute (which would lower the figures' communication share).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Link model. LINK: NVLink 4 on H200 is 900 GB/s per GPU in both directions together
# (NVIDIA H200 datasheet), 450 GB/s each way; ALPHA: per-transfer latency, an ASSUMPTION of
# 10 us (a one-shot NVLink all-reduce of a few hundred KB), not measured here (issue 18).
LINK_GBS, ALPHA_US = 450.0, 10.0
HIDDEN, TOP_K, RANKS, MOE_LAYERS, DENSE_LAYERS = 7168, 8, 8, 58, 3
SGLANG_FLOOR = {"bs1": 75.0, "bs1_mtp": 130.0}  # tok/s, SGLang CI on 8xH200 (anchors.md D.2)
SGLANG_ACCEPT = 2.8  # SGLang CI's accept-length floor for 3 steps (published, anchors.md D.2)


def comm_us(layout: str, batch: int) -> float:
    if layout == "TP8":
        n = batch * HIDDEN * 2
        return 2 * (ALPHA_US + 2 * (RANKS - 1) / RANKS * n / LINK_GBS / 1e3)
    remote = batch * TOP_K * (RANKS - 1) / RANKS
    out = remote * (HIDDEN + HIDDEN // 128 * 4)  # fp8 rows + fp32 block scales
    back = remote * HIDDEN * 2
    return 2 * ALPHA_US + (out + back) / LINK_GBS / 1e3


def _interp(points: dict[int, float], b: float) -> float:
    xs = sorted(points)
    if b <= xs[0]:
        return points[xs[0]]
    for lo, hi in zip(xs, xs[1:]):
        if b <= hi:
            return points[lo] + (points[hi] - points[lo]) * (b - lo) / (hi - lo)
    lo, hi = xs[-2], xs[-1]  # beyond the grid: extend the last segment
    return points[hi] + (points[hi] - points[lo]) * (b - hi) / (hi - lo)


def measure_extras(eager_time_us, graph_time_us) -> dict:
    """LM head, sampling and the dense MLP per batch (GPU)."""
    import torch
    import torch.nn.functional as F

    from ds_plugin.kernels.fp8_format import quant_block
    from ds_plugin.kernels.fp8_linear import fp8_linear

    dev, out = "cuda", {}
    head = torch.randn(129280 // RANKS, HIDDEN, device=dev, dtype=torch.bfloat16) * 0.01
    gu = quant_block(torch.randn(2 * 18432 // RANKS, HIDDEN, device=dev) * 0.01)
    down = quant_block(torch.randn(HIDDEN, 18432 // RANKS, device=dev) * 0.01)
    for b in (1, 8, 32, 128, 512):
        x = torch.randn(b, HIDDEN, device=dev, dtype=torch.bfloat16)
        logits = torch.randn(b, 129280, device=dev)

        def mlp():
            y = fp8_linear(x, *gu)
            i = y.shape[1] // 2
            return fp8_linear(F.silu(y[:, :i]) * y[:, i:], *down)

        out[b] = {"lm_head": graph_time_us(lambda: F.linear(x, head)),
                  "sample": graph_time_us(lambda: logits.argmax(-1)),
                  "dense_mlp_tp8": graph_time_us(mlp)}
    return out


def per_layer(report: dict, layout: str, ctx: int) -> tuple[dict, dict]:
    """batch -> (MoE layer us, attention-part us) for our composition."""
    layer, attn = {}, {}
    for row in report["decode"]:
        if row["layout"] == layout and row["context"] == ctx:
            layer[row["batch"]] = row["us"][row["ours"]]
            attn[row["batch"]] = sum(v for k, v in row["parts"].items() if k.startswith("attn"))
    return layer, attn


def step_us(report: dict, layout: str, ctx: int, batch: float) -> dict:
    layer, attn = per_layer(report, layout, ctx)
    ex = {int(k): v for k, v in report["extras"].items()}
    pick = lambda key: _interp({b: e[key] for b, e in ex.items()}, batch)  # noqa: E731
    moe = _interp(layer, batch)
    parts = {"MoE layers": MOE_LAYERS * moe,
             "dense layers": DENSE_LAYERS * (_interp(attn, batch) + pick("dense_mlp_tp8")),
             "LM head + sampling": pick("lm_head") + pick("sample"),
             "communication (model)": (MOE_LAYERS + DENSE_LAYERS) * comm_us(layout, batch)}
    parts["total"] = sum(parts.values())
    parts["moe_layer"] = moe
    return parts


def print_projection(report: dict, mtp_accept: float | None = None, k: int = 3) -> None:
    accept = mtp_accept or SGLANG_ACCEPT
    src = "measured (--mtp-accept)" if mtp_accept else "SGLang's published CI floor"
    print(f"## 8xH200 projection ({report['device']}, {report['date']}; link {LINK_GBS:.0f} GB/s "
          f"each way (datasheet), {ALPHA_US:.0f} us per transfer (assumed); MTP k={k}, accepted "
          f"length {accept} ({src}))")
    print("| layout | context | batch/rank | step ms | of which comm ms | tok/s per user | "
          "with MTP | total tok/s (8 GPUs) | with MTP |")
    print("|---|---|---|---|---|---|---|---|---|")
    contexts = sorted({r["context"] for r in report["decode"]})
    for layout in ("TP8", "DP-attn+EP8"):
        for ctx in contexts:
            for b in (1, 32):
                p = step_us(report, layout, ctx, b)
                verify = step_us(report, layout, ctx, b * (1 + k))
                mtp_step = verify["total"] + k * (p["moe_layer"] + p["LM head + sampling"])
                users = b * (RANKS if layout != "TP8" else 1)
                tps, tps_mtp = 1e6 / p["total"], accept * 1e6 / mtp_step
                print(f"| {layout} | {ctx} | {b} | {p['total'] / 1e3:.2f} | "
                      f"{p['communication (model)'] / 1e3:.2f} | {tps:.0f} | {tps_mtp:.0f} | "
                      f"{tps * users:.0f} | {tps_mtp * users:.0f} |")
    p1 = step_us(report, "TP8", contexts[0], 1)
    print(f"SGLang's floors on 8xH200 (batch 1): > {SGLANG_FLOOR['bs1']:.0f} tok/s, "
          f"> {SGLANG_FLOOR['bs1_mtp']:.0f} with MTP; projected TP8 batch 1 at "
          f"{contexts[0]} context: {1e6 / p1['total']:.0f} tok/s")
    print("\n## Largest costs of a TP8 batch-32 step (next work), ms per step")
    slow = []
    for row in report["decode"]:
        if row["layout"] == "TP8" and row["batch"] == 32 and row["context"] == contexts[-1]:
            slow += [(f"{n} (x{MOE_LAYERS} MoE layers)", MOE_LAYERS * t / 1e3)
                     for n, t in row["parts"].items()]
    p32 = step_us(report, "TP8", contexts[-1], 32)
    slow += [("communication (model, x61)", p32["communication (model)"] / 1e3),
             ("dense layers (x3)", p32["dense layers"] / 1e3),
             ("LM head + sampling", p32["LM head + sampling"] / 1e3)]
    for name, ms in sorted(slow, key=lambda x: -x[1]):
        print(f"- {name}: {ms:.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path)
    ap.add_argument("--mtp-accept", type=float, default=None)
    args = ap.parse_args()
    print_projection(json.loads(args.result.read_text()), args.mtp_accept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
