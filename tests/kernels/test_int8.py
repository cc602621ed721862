"""INT8 kernels (w8a8_int8 per channel, blockwise_int8): the codec, the run-time activation
quantizers bitwise vs the torch codec, the GEMM in both layouts vs fp32, the grouped GEMM per
(token, expert) pair, and the fused MoE layer vs its fp32 twin.

CPU: the Triton interpreter at small sizes. CUDA (H200): the compiled kernels, DeepSeek-V3
sizes too.
"""

import pytest
import torch

from ds_plugin.kernels.fp8_format import calc_diff
from ds_plugin.kernels.fp8_gemm import GemmConfig
from ds_plugin.kernels.fp8_moe import moe_align
from ds_plugin.kernels.int8_format import (PER_GROUP, PER_TOKEN, dequant_act,
                                           dequant_channel, dequant_int8_block, quant_act,
                                           quant_channel, quant_int8_block, snap_to_int_grid)
from ds_plugin.kernels.int8_gemm import int8_gemm_nt, int8_linear
from ds_plugin.kernels.int8_moe import int8_fused_moe, int8_grouped_gemm_nt
from ds_plugin.kernels.int8_quant import int8_act_quant, int8_silu_mul_quant
from ds_plugin.kernels.ref_fp8 import ref_silu_mul
from ds_plugin.kernels.int8_format import dequant_weight
from ds_plugin.kernels.ref_int8 import (random_int8_weight, ref_int8_fused_moe,
                                        ref_int8_gemm_nt)

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
BF16_ULP = 2 ** -7
GRANS = [PER_TOKEN, PER_GROUP]


def assert_bf16_close(name, got, ref):
    # One fp32 sum rounded once to bf16 on each side, in different orders: 1 bf16 ulp plus a
    # floor for sums that cancel to near zero (as test_fp8_gemm).
    assert got.shape == ref.shape and not got.float().isnan().any(), f"{name}: NaN or shape"
    g, r = got.float(), ref.float()
    tol = r.abs() * BF16_ULP + r.abs().max() * 2 ** -12
    bad = ((g - r).abs() > tol).nonzero()
    assert bad.numel() == 0, (f"{name}: {bad.shape[0]} outside 1 bf16 ulp, first "
                              f"{bad[0].tolist()}: {g[tuple(bad[0])].item()} vs "
                              f"{r[tuple(bad[0])].item()}")


# -- the codec -------------------------------------------------------------------------

def test_codec_round_trips_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(130, 300, generator=g) * torch.logspace(-2, 1, 300)[None, :]
    q, s = quant_channel(w)
    assert q.dtype == torch.int8 and s.shape == (130, 1) and int(q.abs().max()) == 127
    assert ((dequant_channel(q, s) - w).abs() <= s / 2 + 1e-7).all()
    qb, sb = quant_int8_block(w)
    assert sb.shape == (2, 3)
    full = sb.repeat_interleave(128, 0).repeat_interleave(128, 1)[:130, :300]
    assert ((dequant_int8_block(qb, sb) - w).abs() <= full / 2 + 1e-7).all()
    with pytest.raises(ValueError, match="per-channel scales"):
        dequant_channel(q, s[:5])
    with pytest.raises(ValueError, match="scale grid"):
        dequant_int8_block(qb, sb[:, :2])


def test_ties_round_to_even_and_clamp():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5]])  # amax 127 -> scale 1
    q, s = quant_act(x)
    assert s.item() == 1.0 and q.tolist() == [[127, 0, 2, 2, 0, -2]]
    zero = torch.zeros(2, 5)
    qz, sz = quant_act(zero, PER_GROUP)
    assert (qz == 0).all() and (sz > 0).all()


def test_snapped_weights_are_exact_in_every_int8_layout_and_bf16():
    g = torch.Generator().manual_seed(1)
    w = snap_to_int_grid(torch.randn(3, 256, 384, generator=g))
    for q, s, deq in ((*quant_channel(w, pow2=True), dequant_channel),
                      (*quant_int8_block(w, pow2=True), dequant_int8_block)):
        assert torch.equal(torch.exp2(torch.log2(s).round()), s)
        assert torch.equal(deq(q, s), w)
    assert torch.equal(w.bfloat16().float(), w)


# -- activation quantization -----------------------------------------------------------

@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("m,k", [(1, 7), (5, 300), (3, 1024), (2, 2500), (0, 256)])
def test_act_quant_bitwise_equals_codec(gran, m, k):
    g = torch.Generator(device=DEV).manual_seed(k)
    x = (torch.randn(m, k, generator=g, device=DEV) * 3).to(torch.bfloat16)
    if m:
        x[0, : min(k, 129)] = 0  # an all-zero group / partial row
    q, s = int8_act_quant(x, gran)
    q2, s2 = quant_act(x, gran)
    assert torch.equal(q, q2) and torch.equal(s, s2)


def test_act_quant_reads_strided_rows_and_names_bad_input():
    x = torch.randn(4, 512, device=DEV).to(torch.bfloat16)
    q, s = int8_act_quant(x[:, :300], PER_TOKEN)
    q2, s2 = quant_act(x[:, :300].contiguous(), PER_TOKEN)
    assert torch.equal(q, q2) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="int8_act_quant: x must be 2-D"):
        int8_act_quant(x.t(), PER_TOKEN)
    with pytest.raises(ValueError, match="granularity"):
        int8_act_quant(x, "tensor")


@pytest.mark.parametrize("gran", GRANS)
def test_silu_mul_quant_within_one_code(gran):
    # The kernel's silu (on a GPU, a hardware exp approximation) and torch's differ by a few
    # fp32 ulps, which may flip a rounding tie: at most one code, and the scales agree to a
    # few fp32 ulps.
    g = torch.Generator(device=DEV).manual_seed(5)
    gu = (torch.randn(6, 2 * 640, generator=g, device=DEV) * 2).to(torch.bfloat16)
    q, s = int8_silu_mul_quant(gu, gran)
    q2, s2 = quant_act(ref_silu_mul(gu), gran)
    assert (q.int() - q2.int()).abs().max() <= 1
    assert torch.allclose(s, s2, rtol=2 ** -18, atol=0)


# -- GEMM ------------------------------------------------------------------------------

def _operands(m, n, k, blockwise, seed=0, pad=128):
    """a and its scales as views into poisoned wider buffers: code 127 past K (a read past
    K changes the sum) and NaN past a row's scales."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=DEV).to(torch.bfloat16)
    q, s = int8_act_quant(x, PER_GROUP if blockwise else PER_TOKEN)
    a_buf = torch.full((m, k + pad), 127, dtype=torch.int8, device=DEV)
    a_buf[:, :k] = q
    s_buf = torch.full((m, s.shape[1] + 3), float("nan"), device=DEV)
    s_buf[:, :s.shape[1]] = s
    b, b_s = random_int8_weight((n, k), DEV, blockwise, generator=g)
    return a_buf[:, :k], s_buf[:, :s.shape[1]], b, b_s


SMALL = [(1, 200, 576), (5, 96, 300), (33, 130, 256), (70, 64, 128), (130, 136, 384)]
DSV3 = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048),
        (18432 * 2, 7168), (7168, 18432)]
REAL = [(m, n, k) for m in (1, 128, 4096) for n, k in DSV3]


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("m,n,k", SMALL + (REAL if CUDA else []))
def test_gemm_matches_reference(m, n, k, blockwise):
    a, a_s, b, b_s = _operands(m, n, k, blockwise)
    out = int8_gemm_nt(a, a_s, b, b_s)
    assert out.dtype == torch.bfloat16
    assert_bf16_close(f"{m=} {n=} {k=} {blockwise=}", out, ref_int8_gemm_nt(a, a_s, b, b_s))


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_split_k_and_tiles_agree(split, blockwise):
    a, a_s, b, b_s = _operands(20, 100, 640, blockwise, seed=split)
    cfg = GemmConfig(block_m=16, block_n=32, num_warps=4, num_stages=2, split_k=split)
    out = int8_gemm_nt(a, a_s, b, b_s, config=cfg)
    assert_bf16_close(f"{split=}", out, ref_int8_gemm_nt(a, a_s, b, b_s))


def test_channel_products_are_exact_in_int32():
    # Extreme codes over a long K in one K pass (no split): an fp32 accumulator would round,
    # int32 does not, and the one conversion to fp32 rounds as the exact sum's does.
    k = 16384
    a = torch.full((2, k), 127, dtype=torch.int8, device=DEV)
    a[1, ::2] = -127
    b = torch.full((3, k), -127, dtype=torch.int8, device=DEV)
    b[2, 1::3] = 1
    ones_a = torch.ones(2, 1, device=DEV)
    ones_b = torch.ones(3, 1, device=DEV)
    cfg = GemmConfig(block_m=16, block_n=32, num_warps=4, num_stages=2, split_k=1)
    out = int8_gemm_nt(a, ones_a, b, ones_b, out_dtype=torch.float32, config=cfg)
    exact = (a.double() @ b.double().t()).float()
    assert torch.equal(out, exact)


def test_fp32_output_empty_shapes_and_bad_scales():
    a, a_s, b, b_s = _operands(3, 64, 128, False)
    out = int8_gemm_nt(a, a_s, b, b_s, out_dtype=torch.float32)
    ref = ref_int8_gemm_nt(a, a_s, b, b_s, out_dtype=torch.float32)
    assert torch.allclose(out, ref, rtol=2 ** -16, atol=ref.abs().max().item() * 2 ** -20)
    assert int8_gemm_nt(a[:0], a_s[:0], b, b_s).shape == (0, 64)
    with pytest.raises(ValueError, match="fit neither per-channel"):
        int8_gemm_nt(a, a_s, b, b_s[:10])
    with pytest.raises(TypeError, match="int8"):
        int8_gemm_nt(a.float(), a_s, b, b_s)


@pytest.mark.parametrize("blockwise", [False, True])
def test_linear_quantizes_to_the_weights_granularity(blockwise):
    g = torch.Generator(device=DEV).manual_seed(7)
    x = torch.randn(2, 3, 384, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_int8_weight((160, 384), DEV, blockwise, generator=g)
    y = int8_linear(x, w, w_s)
    a, a_s = quant_act(x.reshape(6, 384), PER_GROUP if blockwise else PER_TOKEN)
    assert y.shape == (2, 3, 160)
    assert_bf16_close("linear", y.reshape(6, 160), ref_int8_gemm_nt(a, a_s, w, w_s))


# -- MoE -------------------------------------------------------------------------------

def _routing(m, e, k, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return torch.randn(m, e, generator=g, device=DEV).softmax(-1).topk(k)


def _experts(e, h, i, blockwise, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    w13, s13 = random_int8_weight((e, 2 * i, h), DEV, blockwise, generator=g)
    w2, s2 = random_int8_weight((e, h, i), DEV, blockwise, generator=g)
    return w13, s13, w2, s2


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("m,h,n,e,k", [(5, 256, 192, 6, 2), (3, 300, 130, 3, 3)])
def test_grouped_gemm_each_pair(m, h, n, e, k, blockwise):
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_int8_weight((e, n, h), DEV, blockwise, generator=g)
    tw, ids = _routing(m, e, k)
    sorted_ids, block_expert = moe_align(ids, e, 16)
    xq, xs = int8_act_quant(x, PER_GROUP if blockwise else PER_TOKEN)
    out = int8_grouped_gemm_nt(xq, xs, w, w_s, sorted_ids, block_expert, m * k, k,
                               topk_weights=tw.reshape(-1))
    xd = dequant_act(xq, xs)
    for p in range(m * k):
        t, j = divmod(p, k)
        ex = int(ids[t, j])
        ref = (xd[t] @ dequant_weight(w[ex], w_s[ex]).t()) * tw[t, j]
        tol = ref.abs() * BF16_ULP + ref.abs().max() * 2 ** -12
        assert ((out[p].float() - ref).abs() <= tol).all(), f"pair {p} expert {ex}"


MOE_SMALL = [(5, 256, 128, 6, 2), (1, 256, 128, 4, 1), (17, 384, 256, 8, 3)]
MOE_DSV3 = [(m, 7168, 2048, 256, 8) for m in (1, 64)]


@pytest.mark.parametrize("blockwise", [False, True])
@pytest.mark.parametrize("m,h,i,e,k", MOE_SMALL + (MOE_DSV3 if CUDA else []))
def test_fused_moe_matches_reference(m, h, i, e, k, blockwise):
    # SiLU*up is quantized a second time: a one-ulp bf16 difference in the gate/up product
    # can move one of its codes by a step, so the layer gets a similarity budget (1e-3, as
    # the FP8 MoE), not an ulp bound.
    w13, s13, w2, s2 = _experts(e, h, i, blockwise)
    g = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=3)
    out = int8_fused_moe(x, tw, ids, w13, s13, w2, s2)
    ref = ref_int8_fused_moe(x, tw, ids, w13, s13, w2, s2)
    assert not out.float().isnan().any()
    assert calc_diff(out, ref) < 1e-3, calc_diff(out, ref)


@pytest.mark.parametrize("blockwise", [False, True])
def test_fused_moe_ignores_poisoned_unused_experts(blockwise):
    e, h, i = 6, 256, 128
    w13, s13, w2, s2 = _experts(e, h, i, blockwise)
    x = torch.randn(4, h, device=DEV).to(torch.bfloat16)
    ids = torch.tensor([[0, 2]] * 4, device=DEV)
    tw = torch.full((4, 2), 0.5, device=DEV)
    for unused in (1, 3, 4, 5):
        s13[unused] = float("nan")
        s2[unused] = float("nan")
    out = int8_fused_moe(x, tw, ids, w13, s13, w2, s2)
    assert calc_diff(out, ref_int8_fused_moe(x, tw, ids, w13, s13, w2, s2)) < 1e-3


def test_fused_moe_rejects_mixed_or_mismatched_layouts():
    w13, s13, w2, s2 = _experts(2, 256, 128, False)
    _, _, _, s2b = _experts(2, 256, 128, True)
    x = torch.zeros(1, 256, dtype=torch.bfloat16, device=DEV)
    one = torch.ones(1, 1, device=DEV)
    ids = torch.zeros(1, 1, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="same layout"):
        int8_fused_moe(x, one, ids, w13, s13, w2, s2b)
    with pytest.raises(ValueError, match="w13"):
        int8_fused_moe(x[:, :128], one, ids, w13, s13, w2, s2)
    assert int8_fused_moe(x[:0], one[:0], ids[:0], w13, s13, w2, s2).shape == (0, 256)

