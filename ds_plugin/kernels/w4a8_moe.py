"""Fused MoE over int4 experts with FP8 activations (W4AFP8): align, grouped GEMM (gate+up),
SiLU*mul + FP8 quant, grouped GEMM (down, routing weight applied), combine.

The structure is fp8_moe's (its `moe_align` and block-row layout, fp8_quant's activation
quantizers): only the weight read differs, in w4a8_gemm (the int4 -> FP8 expansion in
registers and the grouped GEMM). Activation scales: static (one fp32 per tensor, the
checkpoint's `input_scale`, maxed over experts as SGLang does) or dynamic (per token per 128
channels, as fp8_moe). With static scales a tile set may also fuse SiLU*mul + quant into
the gate/up GEMM and keep the activations in the permuted layout the MMAs read (MoETiles).
All shapes depend on the batch size only, so the whole path is CUDA-graph capturable.
`ref_w4a8.ref_w4a8_fused_moe` is the fp32 twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_plugin.kernels.fp8_moe import moe_align, moe_block_m
from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_silu_mul_quant
from ds_plugin.kernels.int4_format import (from_kernel_layout, from_tiles, to_kernel_layout,
                                           to_tiles)
from ds_plugin.kernels.w4a8_gemm import (TileConfig, act_perm, fp8_static_quant, int4_to_fp8,
                                         w4a8_gate_up_silu_quant, w4a8_grouped_gemm_nt)

__all__ = ["DEFAULT_TILES", "NAMED_TILES", "MoETiles", "TileConfig", "act_perm",
           "checkpoint_weights", "fp8_static_quant", "int4_to_fp8", "kernel_weights", "w4a8_fused_moe",
           "w4a8_gate_up_silu_quant", "w4a8_grouped_gemm_nt", "w4a8_tiles"]


@dataclass(frozen=True)
class MoETiles:
    """Tiles of the two GEMMs of one call (gate+up, down), and with static activation
    scales (ignored with dynamic ones): `fused` puts SiLU*mul + quant in the gate/up
    epilogue (w4a8_gate_up_silu_quant), `perm` keeps the activations in act_perm's layout."""

    gate_up: TileConfig = TileConfig()
    down: TileConfig = TileConfig()
    fused: bool = False
    perm: bool = False

    def __str__(self) -> str:
        flags = "".join(f" {f}" for f in ("fused", "perm") if getattr(self, f))
        if self.gate_up == self.down:
            return f"{self.gate_up}{flags}"
        return f"{self.gate_up} / {self.down}{flags}"


def _swap(block_n=64, stages=4, warps=4, groups=1, tiled=False) -> TileConfig:
    return TileConfig(block_n=block_n, num_warps=warps, num_stages=stages, swap_ab=True,
                      groups=groups, tiled=tiled)


def _both(tile: TileConfig, **flags) -> MoETiles:
    return MoETiles(tile, tile, **flags)


# Every tile set benchmarks/bench_w4a8_moe.py times, by name. "c2-*" are the H200's call-2
# measurements (benchmarks/results/2026-12-02-h200-w4a8_moe-call2.md); the others add two
# 128-K groups per loop iteration (g2), 4 KB weight tiles (tiled: int4_format.to_tiles),
# activations in the MMA's K order (perm) and SiLU*mul + quant in the gate/up epilogue
# (fused); perm and fused act with static activation scales only.
NAMED_TILES: dict[str, MoETiles] = {
    "c2-decode": MoETiles(_swap(64), _swap(128, stages=3)),
    "c2-b512": MoETiles(_swap(128), _swap(256, stages=3, warps=8)),
    "c2-n128": _both(_swap(128)),
    "c2-n64swap": _both(_swap(64)),
    "c2-n128s3": _both(_swap(128, stages=3)),
    "tiled": _both(_swap(64, tiled=True)),
    "g2-perm": _both(_swap(64, groups=2), perm=True),
    "g2-perm-fused": _both(_swap(64, groups=2), fused=True, perm=True),
    "g2-tiled-perm": _both(_swap(64, groups=2, tiled=True), perm=True),
    "g2-tiled-perm-fused": _both(_swap(64, groups=2, tiled=True), fused=True, perm=True),
    "g2s6-tiled-perm-fused": _both(_swap(64, stages=6, groups=2, tiled=True), fused=True,
                                   perm=True),
    "n128g2-tiled-perm-fused": _both(_swap(128, stages=3, groups=2, tiled=True), fused=True,
                                     perm=True),
}
# The shipped tiles, by the most (token, expert) pairs per routed expert a row serves: the
# call-2 per-GEMM best. To ship another benchmarked set, put its name in the row. All rows
# must share one weight layout (tiled or not: the weights are converted once, at load).
DEFAULT_TILES: tuple[tuple[float, MoETiles], ...] = (
    (8, NAMED_TILES["c2-decode"]),
    (16, NAMED_TILES["c2-b512"]),
    (float("inf"), NAMED_TILES["c2-n128"]),
)


def kernel_weights(p: torch.Tensor) -> torch.Tensor:
    """Checkpoint-packed int4 (..., N, K/2) -> the layout DEFAULT_TILES read (converted once
    at load; all rows share one layout, tests/kernels/test_w4a8_moe.py checks it)."""
    k = to_kernel_layout(p)
    return to_tiles(k) if DEFAULT_TILES[0][1].gate_up.tiled else k


def checkpoint_weights(k: torch.Tensor) -> torch.Tensor:
    """The inverse of kernel_weights."""
    return from_kernel_layout(from_tiles(k) if DEFAULT_TILES[0][1].gate_up.tiled else k)


def w4a8_tiles(num_pairs: int, num_experts: int) -> MoETiles:
    """The DEFAULT_TILES row for this batch's pairs per expert. Tokens sit on the MMA's N
    side (swap-AB) throughout: the weight rows fill the 64-row wgmma tile, and the expanded
    weights feed it from registers (the plain orientation stages them through shared
    memory: 1.15-2.6x slower on the H200)."""
    per_expert = num_pairs / max(num_experts, 1)
    return next(t for limit, t in DEFAULT_TILES if per_expert <= limit)


def w4a8_fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                   w13: torch.Tensor, w13_s: torch.Tensor, w2: torch.Tensor,
                   w2_s: torch.Tensor, a13_scale: torch.Tensor | None = None,
                   a2_scale: torch.Tensor | None = None,
                   tiles: MoETiles | None = None) -> torch.Tensor:
    """Routed experts of one MoE layer on int4 weights with FP8 activations.

    Args:
        x: (M, H) bf16 hidden states.
        topk_weights: (M, k) float routing weights; topk_ids: (M, k) int expert ids.
        w13: (E, 2I, H/2) int8 packed int4 in the layout the tiles read (kernel_weights for
            the default ones), gate rows [0, I) then up rows [I, 2I); w13_s (E, 2I, H/128).
        w2: (E, H, I/2) int8; w2_s (E, H, I/128) fp32.
        a13_scale, a2_scale: static activation scales (one fp32 each) for the gate/up input
            and the down input, both or neither; neither: dynamic per-token groups of 128.
    Returns:
        (M, H) x.dtype: sum_j topk_weights[:, j] * expert_j(x).
    """
    m, h = x.shape
    top_k = topk_ids.shape[1]
    e = w13.shape[0]
    if (w2.shape[0] != e or w2.shape[1] != h or 2 * w13.shape[2] != h
            or w13.shape[1] != 4 * w2.shape[2]):
        raise ValueError(f"w4a8_fused_moe: w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} "
                         f"(packed int4) do not fit hidden {h}")
    if (a13_scale is None) != (a2_scale is None):
        raise ValueError("w4a8_fused_moe: pass both static activation scales or neither")
    pairs = m * top_k
    if pairs == 0:
        return torch.zeros_like(x)
    tiles = tiles or w4a8_tiles(pairs, e)
    bm = moe_block_m(pairs, e)
    sorted_ids, block_expert = moe_align(topk_ids, e, bm)
    static = a13_scale is not None
    perm = static and tiles.perm
    if static:
        xq, xs = fp8_static_quant(x, a13_scale, permute=perm), a13_scale
    else:
        xq, xs = fp8_act_quant(x)
    if static and tiles.fused:
        aq = w4a8_gate_up_silu_quant(xq, xs, w13, w13_s, a2_scale, sorted_ids, block_expert,
                                     pairs, top_k, block_m=bm, tile=tiles.gate_up, a_perm=perm)
        as_ = a2_scale
    else:
        gate_up = w4a8_grouped_gemm_nt(xq, xs, w13, w13_s, sorted_ids, block_expert, pairs,
                                       top_k, block_m=bm, tile=tiles.gate_up, a_perm=perm)
        if static:
            aq = fp8_static_quant(gate_up, a2_scale, silu_mul=True, permute=perm)
            as_ = a2_scale
        else:
            aq, as_ = fp8_silu_mul_quant(gate_up)
    y = w4a8_grouped_gemm_nt(aq, as_, w2, w2_s, sorted_ids, block_expert, pairs, 1,
                             topk_weights=topk_weights.reshape(-1).float(), block_m=bm,
                             tile=tiles.down, a_perm=perm)
    # Rows are already weighted: the combine sums each token's k rows (torch accumulates
    # a bf16 sum in fp32 and rounds once).
    return y.view(m, top_k, h).sum(dim=1).to(x.dtype)
