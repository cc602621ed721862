"""W4A8 MoE: the int4 codec, the in-register int4 -> e4m3 expansion (bitwise, every byte),
the grouped GEMM per (token, expert) pair vs fp32, the static quantizer, the fused layer
(static and dynamic activation scales) vs its fp32 twin, and CUDA-graph replay.

CPU: the Triton interpreter at small sizes (its expansion is the shift-and-cast one).
CUDA: the compiled kernels (the byte-permute expansion) at DeepSeek-V3 sizes too.
"""

import pytest
import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_format import FP8, calc_diff, dequant_groups
from ds_plugin.kernels.fp8_moe import moe_align
from ds_plugin.kernels.fp8_quant import fp8_act_quant
from ds_plugin.kernels.int4_format import (GROUP, dequant_int4, e4m3_codes, from_kernel_layout,
                                           from_tiles, pack_int4, quant_int4, to_kernel_layout,
                                           to_tiles, unpack_int4)
from ds_plugin.kernels.ref_w4a8 import (random_int4_weight, ref_static_quant,
                                        ref_w4a8_fused_moe)
from ds_plugin.kernels.w4a8_moe import (DEFAULT_TILES, MoETiles, TileConfig, act_perm,
                                        fp8_static_quant, int4_to_fp8, kernel_weights,
                                        w4a8_fused_moe, w4a8_gate_up_silu_quant,
                                        w4a8_grouped_gemm_nt, w4a8_tiles)

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# Tile variants every GEMM test runs (the benchmark sweeps the same knobs).
TILES = [TileConfig(), TileConfig(swap_ab=True),
         TileConfig(swap_ab=True, groups=2, tiled=True)] + (
    [TileConfig(block_n=128, swap_ab=True), TileConfig(block_n=128, num_stages=3, swap_ab=True),
     TileConfig(block_n=256, num_warps=8, num_stages=3, swap_ab=True),
     TileConfig(block_n=128, num_stages=3, swap_ab=True, groups=2, tiled=True)] if CUDA else [])
# Whole-layer variants: the unfused, natural-layout path and the static-scale options.
MOE_TILES = [MoETiles(TileConfig(swap_ab=True), TileConfig(swap_ab=True)),
             MoETiles(TILES[2], TILES[2], fused=True, perm=True)] + (
    [MoETiles(TileConfig(swap_ab=True, groups=2), TileConfig(swap_ab=True, groups=2), perm=True),
     MoETiles(TILES[6], TILES[6], fused=True, perm=True)] if CUDA else [])


def _w(w, tile):
    """A kernel-layout weight as the tile reads it."""
    return to_tiles(w) if tile.tiled else w


def _moe_w(k13, k2, tiles):
    assert tiles.gate_up.tiled == tiles.down.tiled
    return _w(k13, tiles.gate_up), _w(k2, tiles.down)


# -- the codec -------------------------------------------------------------------------

def test_pack_order_and_round_trip():
    v = torch.tensor([[1, -2, 7, -8, 0, 3]], dtype=torch.int8)
    p = pack_int4(v)
    # element 2j in the low nibble, 2j+1 in the high one, two's complement
    assert p.view(torch.uint8).tolist() == [[0xE1, 0x87, 0x30]]
    assert torch.equal(unpack_int4(p), v)
    allv = torch.arange(-8, 8, dtype=torch.int8).repeat(4, 2)
    assert torch.equal(unpack_int4(pack_int4(allv)), allv)
    with pytest.raises(ValueError, match="outside"):
        pack_int4(torch.tensor([[8, 0]]))


def test_every_int4_value_is_exact_in_both_fp8_formats():
    vals = torch.arange(-8, 8, dtype=torch.float32)
    assert torch.equal(vals.to(FP8).float(), vals)
    assert torch.equal(vals.to(torch.float8_e5m2).float(), vals)
    assert e4m3_codes() == vals.to(FP8).view(torch.uint8).tolist()


def test_kernel_layout_is_a_lossless_involution():
    g = torch.Generator().manual_seed(3)
    p = torch.randint(-128, 128, (3, 5, 64), dtype=torch.int8, generator=g)
    k = to_kernel_layout(p)
    assert k.shape == p.shape and k.dtype == torch.int8 and not torch.equal(k, p)
    assert torch.equal(from_kernel_layout(k), p)
    # word bytes 1 and 2 swap, nibbles go offset-binary
    one = pack_int4(torch.tensor([[-8, -7, -6, -5, -4, -3, -2, -1]]))
    assert to_kernel_layout(one).view(torch.uint8).tolist() == [[0x10, 0x54, 0x32, 0x76]]
    with pytest.raises(ValueError, match="multiple of 4"):
        to_kernel_layout(torch.zeros(1, 6, dtype=torch.int8))


def test_tiled_layout_moves_whole_groups():
    g = torch.Generator().manual_seed(5)
    p = torch.randint(-128, 128, (2, 128, 192), dtype=torch.int8, generator=g)
    t = to_tiles(p)
    assert t.shape == p.shape and torch.equal(from_tiles(t), p)
    # byte (n, 64 g + b) -> row block n // 64, then group g, then row n % 64, byte b
    flat = t.reshape(2, -1)
    for n, grp, b in ((0, 0, 0), (70, 1, 5), (127, 2, 63)):
        at = (n // 64) * 64 * 192 + grp * 64 * 64 + (n % 64) * 64 + b
        assert flat[1, at] == p[1, n, 64 * grp + b]
    assert torch.equal(to_tiles(to_kernel_layout(p)), to_kernel_layout(to_tiles(p)))
    with pytest.raises(ValueError, match="multiple of 64"):
        to_tiles(torch.zeros(32, 64, dtype=torch.int8))


def test_quant_dequant_bounds_and_pow2_exactness():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 3 * GROUP, generator=g) * torch.logspace(-2, 1, 3 * GROUP)[None, :]
    p, s = quant_int4(w)
    assert p.shape == (64, 3 * GROUP // 2) and p.dtype == torch.int8 and s.shape == (64, 3)
    err = (dequant_int4(p, s) - w).abs()
    assert (err <= s.repeat_interleave(GROUP, 1) / 2 + 1e-7).all()  # half a step
    p2, s2 = quant_int4(w, pow2=True)
    assert torch.equal(torch.exp2(torch.log2(s2).round()), s2)
    # int4 x power of two is exact in bf16: the checkpoint's bf16 twin is exact
    deq = dequant_int4(p2, s2)
    assert torch.equal(deq.bfloat16().float(), deq)
    with pytest.raises(ValueError, match="scale grid"):
        dequant_int4(p, s[:, :2])
    with pytest.raises(ValueError, match="multiple of the group"):
        quant_int4(torch.zeros(2, 100))


# -- in-register expansion -------------------------------------------------------------

@triton.jit
def _expand_probe(w_ptr, v0_ptr, v1_ptr, ROWS: tl.constexpr, ASM: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * 64 + tl.arange(0, 64)[None, :]
    v0, v1 = int4_to_fp8(tl.load(w_ptr + offs), ROWS, ASM)
    tl.store(v0_ptr + offs, v0)
    tl.store(v1_ptr + offs, v1)


@pytest.mark.parametrize("asm", [False, True] if CUDA else [False])
def test_expansion_is_exact_for_every_byte(asm):
    # 16 rows x 64 bytes of kernel layout: all 256 byte values four times, shuffled.
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randperm(256, generator=g) for _ in range(4)]).to(torch.uint8)
    w = w.view(torch.int8).view(16, 64).to(DEV)
    v0 = torch.empty(16, 64, dtype=torch.float8_e5m2, device=DEV)
    v1 = torch.empty_like(v0)
    _expand_probe[(1,)](w, v0, v1, ROWS=16, ASM=asm)
    vals = unpack_int4(from_kernel_layout(w.cpu())).float().view(16, 16, 2, 4)  # K = 8c+4h+r
    for h, got in enumerate((v0, v1)):
        want = vals[:, :, h, :].reshape(16, 64).to(torch.float8_e5m2)
        assert torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8)), f"v{h}"


# -- grouped GEMM ----------------------------------------------------------------------

def _routing(m, e, k, seed=0, skew=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    logits = torch.randn(m, e, generator=g, device=DEV)
    if skew:
        logits[:, 0] += 10
    return logits.softmax(-1).topk(k)


def _bf16_ulp_bound(ref):
    return ref.abs() * 2 ** -7 + ref.abs().max() * 2 ** -12  # 1 bf16 ulp, as test_fp8_moe


# Both scale kinds on the first three tiles, static (the checkpoints' kind) on the rest:
# each case is a compile on the H200, whose run is time-boxed.
GEMM_CASES = [(t, s) for t in TILES[:3] for s in (False, True)] + [(t, True) for t in TILES[3:]]


@pytest.mark.parametrize("tile,static", GEMM_CASES,
                         ids=[f"{t}-{'static' if s else 'dynamic'}" for t, s in GEMM_CASES])
def test_grouped_gemm_each_pair(tile, static):
    # N = 192 is not a multiple of the 128/256 tiles; scales transposed in memory.
    m, h, n, e, k = 5, 256, 192, 6, 2
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_int4_weight((e, n, h), DEV, generator=g)
    w_s = w_s.transpose(1, 2).contiguous().transpose(1, 2)
    tw, ids = _routing(m, e, k)
    sorted_ids, block_expert = moe_align(ids, e, 16)
    if static:
        xs = torch.tensor([0.02], device=DEV)
        xq = fp8_static_quant(x, xs)
        xd = xq.float() * 0.02
    else:
        xq, xs = fp8_act_quant(x)
        xd = dequant_groups(xq, xs)
    out = w4a8_grouped_gemm_nt(xq, xs, _w(to_kernel_layout(w), tile), w_s, sorted_ids,
                               block_expert, m * k, k, topk_weights=tw.reshape(-1), tile=tile)
    for p in range(m * k):
        t, j = divmod(p, k)
        ex = int(ids[t, j])
        ref = (xd[t] @ dequant_int4(w[ex], w_s[ex]).t()) * tw[t, j]
        assert ((out[p].float() - ref).abs() <= _bf16_ulp_bound(ref)).all(), f"pair {p}"


@pytest.mark.parametrize("tile", TILES[1:3], ids=str)
def test_grouped_gemm_permuted_activations_are_the_same_product(tile):
    # The permuted layout only moves columns to where the MMA reads them: same sums.
    m, h, n, e, k = 4, 256, 128, 3, 2
    g = torch.Generator(device=DEV).manual_seed(8)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_int4_weight((e, n, h), DEV, generator=g)
    w = _w(to_kernel_layout(w), tile)
    _, ids = _routing(m, e, k, seed=9)
    sorted_ids, block_expert = moe_align(ids, e, 16)
    xs = torch.tensor([0.03], device=DEV)
    xq = fp8_static_quant(x, xs)
    xp = fp8_static_quant(x, xs, permute=True)
    assert torch.equal(xp.view(torch.uint8), xq[:, act_perm(h, DEV)].view(torch.uint8))
    args = (w, w_s, sorted_ids, block_expert, m * k, k)
    nat = w4a8_grouped_gemm_nt(xq, xs, *args, tile=tile)
    prm = w4a8_grouped_gemm_nt(xp, xs, *args, tile=tile, a_perm=True)
    assert torch.equal(nat, prm)


def test_grouped_gemm_rejects_bad_layouts():
    w, w_s = random_int4_weight((2, 64, 256), DEV)
    a = torch.zeros(1, 256, dtype=FP8, device=DEV)
    s = torch.ones(1, 2, device=DEV)
    ids = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    sorted_ids, block_expert = moe_align(ids, 2, 16)
    with pytest.raises(ValueError, match="int8"):
        w4a8_grouped_gemm_nt(a, s, w.view(torch.uint8), w_s, sorted_ids, block_expert, 1, 1)
    with pytest.raises(ValueError, match="scales"):
        w4a8_grouped_gemm_nt(a, s, w, w_s[:, :, :1], sorted_ids, block_expert, 1, 1)
    with pytest.raises(ValueError, match="a_s"):
        w4a8_grouped_gemm_nt(a, s[:, :1], w, w_s, sorted_ids, block_expert, 1, 1)


# -- static quantizer ------------------------------------------------------------------

@pytest.mark.parametrize("silu_mul", [False, True])
def test_static_quant_is_bitwise_the_twin(silu_mul):
    g = torch.Generator(device=DEV).manual_seed(4)
    x = (torch.randn(7, 2 * 300, generator=g, device=DEV) * 3).to(torch.bfloat16)
    x[0, :5] = torch.tensor([1e4, -1e4, 0.0, -0.0, 1e-30])  # saturation and signed zero
    scale = torch.tensor([0.0123], device=DEV)
    q = fp8_static_quant(x, scale, silu_mul=silu_mul)
    if silu_mul:
        g_, u = x[:, :300].float(), x[:, 300:].float()
        src = g_ / (1.0 + torch.exp(-g_)) * u
    else:
        src = x
    want = ref_static_quant(src, scale)
    # silu's exp differs by an ulp between Triton and torch: one e4m3 step at most there
    if silu_mul:
        assert ((q.float() - want.float()).abs() <= want.float().abs() * 2 ** -3 + 2 ** -9).all()
    else:
        assert torch.equal(q.view(torch.uint8), want.view(torch.uint8))
    with pytest.raises(ValueError, match="multiple of 128"):
        fp8_static_quant(x, scale, silu_mul=silu_mul, permute=True)  # K = 300 or 600
    x = x[:, :512] if not silu_mul else torch.cat([x[:, :256], x[:, 300:556]], 1)
    q = fp8_static_quant(x, scale, silu_mul=silu_mul)
    qp = fp8_static_quant(x, scale, silu_mul=silu_mul, permute=True)
    assert torch.equal(qp.view(torch.uint8), q[:, act_perm(q.shape[1], DEV)].view(torch.uint8))


@pytest.mark.parametrize("tile", TILES[1:3], ids=str)
@pytest.mark.parametrize("perm", [False, True])
def test_gate_up_silu_epilogue_is_the_unfused_path(tile, perm):
    # Same gate/up sums, the same bf16 rounding and SiLU-quant arithmetic in the epilogue.
    m, h, i, e, k = 6, 256, 128, 5, 2
    g = torch.Generator(device=DEV).manual_seed(10)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_int4_weight((e, 2 * i, h), DEV, generator=g)
    w = _w(to_kernel_layout(w), tile)
    _, ids = _routing(m, e, k, seed=11)
    sorted_ids, block_expert = moe_align(ids, e, 16)
    xs, qs = torch.tensor([0.03], device=DEV), torch.tensor([0.005], device=DEV)
    xq = fp8_static_quant(x, xs, permute=perm)
    args = (sorted_ids, block_expert, m * k, k)
    gate_up = w4a8_grouped_gemm_nt(xq, xs, w, w_s, *args, tile=tile, a_perm=perm)
    want = fp8_static_quant(gate_up, qs, silu_mul=True, permute=perm).float()
    got = w4a8_gate_up_silu_quant(xq, xs, w, w_s, qs, *args, tile=tile, a_perm=perm).float()
    assert got.shape == (m * k, i)
    # exp may be contracted differently in the two kernels: one e4m3 step at most, rarely
    step = (got - want).abs() <= want.abs() * 2 ** -3 + 2 ** -9
    assert step.all() and (got == want).float().mean() > 0.99
    with pytest.raises(ValueError, match="static"):
        w4a8_gate_up_silu_quant(xq, torch.ones(m, 2, device=DEV), w, w_s, qs, *args)


# -- the fused layer -------------------------------------------------------------------

def _experts(e, h, i, seed=0):
    """Checkpoint-layout experts (for the references) and their kernel-layout copies."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    w13, s13 = random_int4_weight((e, 2 * i, h), DEV, generator=g)
    w2, s2 = random_int4_weight((e, h, i), DEV, generator=g)
    return w13, s13, w2, s2, to_kernel_layout(w13), to_kernel_layout(w2)


SMALL = [(5, 256, 128, 6, 2), (1, 256, 128, 4, 1), (17, 384, 256, 8, 3)]
DSV3 = [(m, 7168, 2048, 256, 8) for m in (1, 64)] + [(300, 7168, 2048, 32, 8)]
SCALES = {"dynamic": (None, None), "static": (0.02, 0.004)}


@pytest.mark.parametrize("scales", list(SCALES))
@pytest.mark.parametrize("m,h,i,e,k", SMALL + (DSV3 if CUDA else []))
def test_fused_moe_matches_reference(m, h, i, e, k, scales):
    # The SiLU output is quantized a second time, so (as in test_fp8_moe) a one-ulp bf16
    # difference in gate/up can move one e4m3 code: a similarity budget, not an ulp bound.
    w13, s13, w2, s2, k13, k2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=3, skew=(m == 17))
    a13, a2 = (None if s is None else torch.tensor([s], device=DEV) for s in SCALES[scales])
    out = w4a8_fused_moe(x, tw, ids, k13, s13, k2, s2, a13, a2)
    if m > 16:  # the fp32 loop is slow: check 8 tokens spread over the batch
        rows = torch.arange(0, m, m // 8, device=DEV)[:8]
        out, x, tw, ids = out[rows], x[rows], tw[rows], ids[rows]
    ref = ref_w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, a13, a2)
    assert not out.float().isnan().any()
    assert calc_diff(out, ref) < 1e-3, calc_diff(out, ref)


@pytest.mark.parametrize("tiles", MOE_TILES, ids=str)
@pytest.mark.parametrize("scales", list(SCALES))
@pytest.mark.parametrize("m,h,i,e,k", SMALL[:2] + (DSV3[:1] if CUDA else []))
def test_fused_moe_variants_match_reference(m, h, i, e, k, scales, tiles):
    # The benchmark's whole-layer variants (fused / permuted apply to static scales only).
    w13, s13, w2, s2, k13, k2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=3)
    a13, a2 = (None if s is None else torch.tensor([s], device=DEV) for s in SCALES[scales])
    out = w4a8_fused_moe(x, tw, ids, *_interleave(_moe_w(k13, k2, tiles), s13, s2), a13, a2,
                         tiles=tiles)
    ref = ref_w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, a13, a2)
    assert calc_diff(out, ref) < 1e-3, calc_diff(out, ref)


def _interleave(ws, s13, s2):
    return ws[0], s13, ws[1], s2


def test_default_tiles_share_one_weight_layout():
    # The weights are converted once at load, for every batch size's tiles.
    tiled = {t.tiled for _, row in DEFAULT_TILES for t in (row.gate_up, row.down)}
    assert len(tiled) == 1
    assert [lim for lim, _ in DEFAULT_TILES] == sorted(lim for lim, _ in DEFAULT_TILES)
    assert DEFAULT_TILES[-1][0] == float("inf")
    for pairs, e in ((8, 256), (4096, 256), (4096, 32), (64, 2)):
        assert w4a8_tiles(pairs, e) in [row for _, row in DEFAULT_TILES]
    p = torch.randint(-128, 128, (2, 128, 128), dtype=torch.int8)
    want = to_kernel_layout(p)
    assert torch.equal(kernel_weights(p), to_tiles(want) if tiled == {True} else want)


def test_fused_moe_ignores_poisoned_unused_experts():
    e, h, i = 6, 256, 128
    w13, s13, w2, s2, k13, k2 = _experts(e, h, i)
    x = torch.randn(4, h, device=DEV).to(torch.bfloat16)
    ids = torch.tensor([[0, 2]] * 4, device=DEV)
    tw = torch.full((4, 2), 0.5, device=DEV)
    for unused in (1, 3, 4, 5):
        s13[unused] = float("nan")
        s2[unused] = float("nan")
    out = w4a8_fused_moe(x, tw, ids, k13, s13, k2, s2)
    assert calc_diff(out, ref_w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2)) < 1e-3


def test_fused_moe_tiles_agree():
    # Every tile variant computes the same sums (up to fp32 reassociation).
    _, s13, _, s2, k13, k2 = _experts(8, 256, 128)
    x = torch.randn(9, 256, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(9, 8, 2, seed=5)
    outs = [w4a8_fused_moe(x, tw, ids, *_interleave(_moe_w(k13, k2, MoETiles(t, t)), s13, s2),
                           tiles=MoETiles(t, t)) for t in TILES[:3] + TILES[6:]]
    for o in outs[1:]:
        assert calc_diff(o, outs[0]) < 1e-4


def test_fused_moe_rejects_mismatched_experts():
    _, s13, _, s2, w13, w2 = _experts(2, 256, 128)
    one = torch.ones(1, 1, device=DEV)
    with pytest.raises(ValueError, match="w13"):
        w4a8_fused_moe(torch.zeros(1, 128, dtype=torch.bfloat16, device=DEV), one,
                       torch.zeros(1, 1, dtype=torch.long, device=DEV), w13, s13, w2, s2)
    with pytest.raises(ValueError, match="both"):
        w4a8_fused_moe(torch.zeros(1, 256, dtype=torch.bfloat16, device=DEV), one,
                       torch.zeros(1, 1, dtype=torch.long, device=DEV), w13, s13, w2, s2,
                       a13_scale=torch.ones(1, device=DEV))


@pytest.mark.skipif(not CUDA, reason="CUDA graphs")
@pytest.mark.parametrize("scales", list(SCALES))
def test_fused_moe_cuda_graph_replay(scales):
    # Shapes depend on the batch only: a captured call replays on new routing and inputs.
    e, h, i, m, k = 256, 7168, 2048, 8, 8
    _, s13, _, s2, w13, w2 = _experts(e, h, i)
    a13, a2 = (None if s is None else torch.tensor([s], device=DEV) for s in SCALES[scales])
    x = torch.randn(m, h, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=6)
    w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, a13, a2)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, a13, a2)
    x.copy_(torch.randn(m, h, device=DEV).to(torch.bfloat16))
    tw2, ids2 = _routing(m, e, k, seed=7)
    tw.copy_(tw2)
    ids.copy_(ids2)
    graph.replay()
    eager = w4a8_fused_moe(x, tw, ids, w13, s13, w2, s2, a13, a2)
    assert torch.equal(out, eager)
