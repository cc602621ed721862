"""Block-FP8 fused MoE at DeepSeek-V3 size (hidden 7168, expert intermediate 2048, 256
experts, top-8): ours vs a per-expert torch loop, decode batches 1..512.

Run on a GPU: `PYTHONPATH=. python benchmarks/bench_fp8_moe.py`. GB/s counts the bytes of
the experts the batch touches (w13 + w2 + their scales), which is what bounds decode.
"""

from __future__ import annotations

import sys

import torch

from _fp8_common import CEIL_COPY_TBS, copy_bandwidth_tbs, time_ms, torch_blockwise_mm
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


def main():
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
