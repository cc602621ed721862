"""Block-FP8 fused MoE at DeepSeek-V3 size (hidden 7168, expert intermediate 2048, top-8).

Decode (default): 256 experts, batches 1..512, ours vs a per-expert torch loop; GB/s counts
the bytes of the experts the batch touches (w13 + w2 + their scales), which bounds decode.

Prefill (`--prefill`): 32 experts (an EP8 shard) and 256, 512..16384 tokens; ours on both
paths (the prefill path and the decode kernel), bf16 torch._grouped_mm and rowwise-FP8
torch._scaled_grouped_mm on pre-sorted rows (routing and combine left out), and with
`--flashinfer` FlashInfer's block-scale FP8 entries that run on sm_90. TFLOP/s counts
2 * tokens * top_k * H * 3I; each ours/FlashInfer output is checked before it is timed.

Run on a GPU: `PYTHONPATH=. python benchmarks/bench_fp8_moe.py [--prefill [--flashinfer]
[--experts 32 256] [--tokens ...]]`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _fp8_common import (CEIL_COPY_TBS, copy_bandwidth_tbs, flashinfer_gemm_loop_peer,
                         flashinfer_moe_peers, time_ms, torch_blockwise_mm,
                         torch_grouped_peers)
from ds_plugin.kernels.fp8_gemm import fp8_block_gemm_nt
from ds_plugin.kernels.fp8_moe import fp8_fused_moe
from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_silu_mul_quant
from ds_plugin.kernels.fp8_format import calc_diff
from ds_plugin.kernels.ref_fp8 import random_fp8_weight

H, I, E, TOP_K = 7168, 2048, 256, 8
BATCHES = [1, 8, 32, 128, 512]


def naive_loop(x, tw, ids, w13, s13, w2, s2, gemm):
    """One expert at a time: gather its tokens, two GEMMs, scatter-add. Host-synchronising
    (it reads which experts are hit), as a straightforward torch port would be."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        xq, xs = fp8_act_quant(x[tok])
        h = gemm(xq, xs, w13[e], s13[e])
        aq, as_ = fp8_silu_mul_quant(h)
        y = gemm(aq, as_, w2[e], s2[e])
        out.index_add_(0, tok, y.float() * tw[tok, slot, None])
    return out.to(x.dtype)


def _torch_gemm(a, a_s, b, b_s):
    # Layout probing happens once per call here; it is a few host checks, and this loop
    # is the naive baseline anyway.
    return torch_blockwise_mm(a, a_s, b, b_s)()


def _cell(fn, flop, graph=True):
    try:
        ms = time_ms(fn, graph=graph)
        return ms, f"{ms:.3f} ({flop / ms / 1e9:.0f})"
    except Exception as e:  # noqa: BLE001 - keep the row; say why the peer is absent
        return None, f"failed: {str(e).splitlines()[0][:60]}"


def prefill(experts, tokens, with_flashinfer):
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}; H={H} I={I} top-{TOP_K}; "
          "cells: ms (TFLOP/s); peers run GEMMs (+ SiLU for bf16) on pre-sorted rows only")
    e_max = max(experts)
    w13, s13 = random_fp8_weight((e_max, 2 * I, H), "cuda")
    w2, s2 = random_fp8_weight((e_max, H, I), "cuda")
    w13b = torch.randn(e_max, 2 * I, H, device="cuda", dtype=torch.bfloat16) / H ** 0.5
    w2b = torch.randn(e_max, H, I, device="cuda", dtype=torch.bfloat16) / I ** 0.5
    cols = ["ours prefill path", "ours decode kernel", "bf16 _grouped_mm",
            "fp8 rowwise _scaled_grouped_mm"]
    hdr = ("| E | tokens | " + " | ".join(cols) + " | ours vs bf16 | ours vs scaled_grouped |"
           " diff prefill vs decode |" + (" flashinfer |" if with_flashinfer else ""))
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1), flush=True)
    notes_done = False
    for e in experts:
        for m in tokens:
            g = torch.Generator(device="cuda").manual_seed(m + e)
            x = torch.randn(m, H, device="cuda", generator=g).to(torch.bfloat16)
            tw, ids = torch.randn(m, e, device="cuda", generator=g).softmax(-1).topk(TOP_K)
            args = (x, tw, ids, w13[:e], s13[:e], w2[:e], s2[:e])
            flop = 2 * m * TOP_K * H * 3 * I
            ours = fp8_fused_moe(*args, prefill=True)
            dec = fp8_fused_moe(*args, prefill=False)
            t_pre, c_pre = _cell(lambda: fp8_fused_moe(*args, prefill=True), flop)
            _, c_dec = _cell(lambda: fp8_fused_moe(*args, prefill=False), flop)
            peers = torch_grouped_peers(ids, w13b[:e], w2b[:e], I)
            t_bf, c_bf = _cell(peers["bf16 _grouped_mm"], flop)
            t_sc, c_sc = _cell(peers["fp8 rowwise _scaled_grouped_mm"], flop)
            del peers
            r_bf = f"{t_bf / t_pre:.2f}x" if t_bf and t_pre else "-"
            r_sc = f"{t_sc / t_pre:.2f}x" if t_sc and t_pre else "-"
            cells = [c_pre, c_dec, c_bf, c_sc, r_bf, r_sc, f"{calc_diff(ours, dec):.1e}"]
            if with_flashinfer:
                fi = []
                try:
                    fpeers, notes = flashinfer_moe_peers(*args)
                    if not notes_done:
                        print("# " + "\n# ".join(notes))
                        notes_done = True
                    for name, fn in fpeers.items():
                        d = calc_diff(fn(), ours)
                        if d < 1e-2:
                            fi.append(f"{name}: {_cell(fn, flop, graph=False)[1]} diff {d:.1e}")
                        else:
                            fi.append(f"{name}: WRONG diff {d:.1e}")
                    run, check = flashinfer_gemm_loop_peer(ids, *args[3:])
                    d = check()
                    fi.append(f"fp8_blockscale_gemm_sm90 loop: {_cell(run, flop, graph=False)[1]}"
                              f" diff(expert 0) {d:.1e}")
                except Exception as ex:  # noqa: BLE001
                    fi.append(f"failed: {type(ex).__name__}: {str(ex).splitlines()[0][:80]}")
                cells.append("; ".join(fi))
            print(f"| {e} | {m} | " + " | ".join(cells) + " |", flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--flashinfer", action="store_true")
    ap.add_argument("--experts", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--tokens", type=int, nargs="+",
                    default=[512, 1024, 2048, 4096, 8192, 16384])
    args = ap.parse_args()
    if args.prefill:
        return prefill(args.experts, args.tokens, args.flashinfer)
    copy = copy_bandwidth_tbs()
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy:.2f} TB/s "
          f"(brief: {CEIL_COPY_TBS}); E={E} H={H} I={I} top-{TOP_K}")
    w13, s13 = random_fp8_weight((E, 2 * I, H), "cuda")
    w2, s2 = random_fp8_weight((E, H, I), "cuda")
    expert_bytes = 2 * I * H + H * I + 4 * (s13[0].numel() + s2[0].numel())
    try:
        torch_blockwise_mm(*fp8_act_quant(torch.randn(16, H, device="cuda").to(torch.bfloat16)),
                           w13[0], s13[0])
        peers = [("torch scaled_mm loop", _torch_gemm), ("our-gemm loop", fp8_block_gemm_nt)]
    except Exception as e:  # noqa: BLE001
        print(f"# torch blockwise scaled_mm unavailable: {str(e).splitlines()[0][:80]}")
        peers = [("our-gemm loop", fp8_block_gemm_nt)]
    hdr = ("| batch | experts hit | MB touched | ours us | GB/s | /copy | "
           + " | ".join(f"{name} us | ours speed-up" for name, _ in peers) + " | diff vs loop |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for b in BATCHES:
        g = torch.Generator(device="cuda").manual_seed(b)
        x = torch.randn(b, H, device="cuda", generator=g).to(torch.bfloat16)
        tw, ids = torch.randn(b, E, device="cuda", generator=g).softmax(-1).topk(TOP_K)
        hit = ids.unique().numel()
        byts = hit * expert_bytes + b * H * 2 * 2
        t = time_ms(lambda: fp8_fused_moe(x, tw, ids, w13, s13, w2, s2)) * 1e-3
        ours = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2)
        cells = []
        diff = float("nan")
        for _, gemm in peers:
            try:
                tl_ = time_ms(lambda: naive_loop(x, tw, ids, w13, s13, w2, s2, gemm),
                              graph=False) * 1e-3
                diff = calc_diff(ours, naive_loop(x, tw, ids, w13, s13, w2, s2, gemm))
                cells.append(f"{tl_ * 1e6:.0f} | {tl_ / t:.2f}")
            except Exception as e:  # noqa: BLE001 - keep the row; say why the peer is absent
                cells.append(f"failed: {str(e).splitlines()[0][:60]} | -")
        print(f"| {b} | {hit} | {byts / 1e6:.0f} | {t * 1e6:.1f} | {byts / t / 1e9:.0f} | "
              f"{byts / t / 1e12 / copy:.2f} | " + " | ".join(cells) + f" | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
