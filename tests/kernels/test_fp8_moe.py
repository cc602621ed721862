"""Fused block-FP8 MoE: align invariants, each grouped GEMM vs fp32, and the whole layer."""

import pytest
import torch

CUDA = torch.cuda.is_available()

from ds_plugin.kernels.fp8_moe import (fp8_fused_moe, fp8_grouped_gemm_nt, moe_align,
                                       use_prefill_path)
from ds_plugin.kernels.fp8_moe_prefill import PrefillConfig, gather_rows, moe_align_chunked
from ds_plugin.kernels.fp8_quant import fp8_act_quant
from ds_plugin.kernels.fp8_format import calc_diff, dequant_block, dequant_groups
from ds_plugin.kernels.ref_fp8 import random_fp8_weight, ref_fused_moe, ref_moe_align

DEV = "cuda" if CUDA else "cpu"


def _routing(m, e, k, seed=0, skew=False):
    g = torch.Generator(device=DEV).manual_seed(seed)
    logits = torch.randn(m, e, generator=g, device=DEV)
    if skew:  # most tokens on expert 0: one long run, many empty experts
        logits[:, 0] += 10
    w, ids = logits.softmax(-1).topk(k)
    return w, ids


@pytest.mark.parametrize("m,e,k,bm", [(1, 8, 2, 16), (7, 5, 3, 16), (40, 16, 4, 32),
                                      (64, 4, 1, 64), (0, 4, 2, 16), (9, 6, 2, 16)])
def test_align_invariants(m, e, k, bm):
    _, ids = _routing(m, e, k, skew=(m == 9))
    sorted_ids, block_expert = moe_align(ids, e, bm)
    pairs = m * k
    assert sorted_ids.numel() % bm == 0 and block_expert.numel() == sorted_ids.numel() // bm
    real = sorted_ids[sorted_ids < pairs]
    assert torch.equal(real.sort().values.long(), torch.arange(pairs, device=DEV))  # each once
    flat = ids.reshape(-1)
    for b, ex in enumerate(block_expert.tolist()):
        rows = sorted_ids[b * bm:(b + 1) * bm]
        rows = rows[rows < pairs].long()
        if ex < 0:
            assert rows.numel() == 0  # past the end: padding only
        else:
            assert rows.numel() > 0 and (flat[rows] == ex).all()
            assert torch.equal(rows, rows.sort().values)  # stable: token order kept


@pytest.mark.parametrize("m,e,k,bm", [(1, 8, 2, 16), (7, 5, 3, 16), (40, 16, 4, 32), (3, 300, 8, 16),
                                      (9, 6, 2, 16), (64, 256, 8, 16)]
                         + ([(512, 256, 8, 16), (300, 256, 8, 64)] if CUDA else []))
def test_align_kernel_equals_torch_twin(m, e, k, bm):
    # Data movement: the single-program Triton align must give the twin's arrays exactly.
    _, ids = _routing(m, e, k, seed=m, skew=(m == 9))
    got = moe_align(ids.to(torch.int32), e, bm)
    ref = ref_moe_align(ids, e, bm)
    for name, g, r in zip(("sorted_ids", "block_expert"), got, ref):
        assert torch.equal(g, r), f"{name}: first difference at {(g != r).nonzero()[0].tolist()}"


@pytest.mark.parametrize("m,e,k,bm,chunk", [(40, 4, 2, 16, 16), (9, 6, 2, 16, 16), (33, 300, 3, 64, 32)]
                         + ([(16384, 256, 8, 128, None), (4096, 32, 8, 64, None),
                             (1000, 256, 8, 128, 1024)] if CUDA else []))
def test_chunked_align_equals_torch_twin(m, e, k, bm, chunk):
    # Several chunks (the last one partial), skewed routing included: the multi-program
    # align must give the twin's arrays exactly, and count the blocks that hold rows.
    _, ids = _routing(m, e, k, seed=m, skew=(m == 9))
    sorted_ids, block_expert, num_blocks = moe_align_chunked(ids.to(torch.int32), e, bm, chunk)
    ref = ref_moe_align(ids, e, bm)
    for name, g, r in zip(("sorted_ids", "block_expert"), (sorted_ids, block_expert), ref):
        assert torch.equal(g, r), f"{name}: first difference at {(g != r).nonzero()[0].tolist()}"
    assert int(num_blocks) == int((ref[1] >= 0).sum())


def test_gather_rows_is_exact_data_movement():
    # Sorted block rows hold their token's codes and scales bitwise (K-major scales);
    # padding rows hold code 0 and scale 1.0; blocks past the end stay untouched.
    m, e, k, bm, h = 13, 4, 2, 16, 256
    _, ids = _routing(m, e, k, seed=11, skew=True)
    sorted_ids, block_expert, num_blocks = moe_align_chunked(ids, e, bm)
    xq, xs = fp8_act_quant(torch.randn(m, h, device=DEV).to(torch.bfloat16))
    out, out_s = gather_rows(xq, xs, sorted_ids, block_expert, m * k, k, bm)
    rows = int(num_blocks) * bm
    pair = sorted_ids[:rows].long()
    real = pair < m * k
    tok = pair[real] // k
    assert torch.equal(out[:rows][real].view(torch.uint8), xq[tok].view(torch.uint8))
    assert torch.equal(out_s[:, :rows][:, real], xs[tok].t())
    assert (out[:rows][~real].view(torch.uint8) == 0).all()
    assert (out_s[:, :rows][:, ~real] == 1.0).all()


def _experts(e, h, i, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    w13, s13 = random_fp8_weight((e, 2 * i, h), DEV, generator=g)
    w2, s2 = random_fp8_weight((e, h, i), DEV, generator=g)
    return w13, s13, w2, s2


@pytest.mark.parametrize("m,h,n,e,k", [(5, 256, 192, 6, 2), (3, 300, 130, 3, 3)])
def test_grouped_gemm_each_pair(m, h, n, e, k):
    # Gate/up stage: row p of the output is token p // k times its expert's weight.
    g = torch.Generator(device=DEV).manual_seed(1)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    w, w_s = random_fp8_weight((e, n, h), DEV, generator=g)
    tw, ids = _routing(m, e, k)
    sorted_ids, block_expert = moe_align(ids, e, 16)
    xq, xs = fp8_act_quant(x)
    out = fp8_grouped_gemm_nt(xq, xs, w, w_s, sorted_ids, block_expert, m * k, k,
                              topk_weights=tw.reshape(-1))
    xd = dequant_groups(xq, xs)
    for p in range(m * k):
        t, j = divmod(p, k)
        ex = int(ids[t, j])
        ref = (xd[t] @ dequant_block(w[ex], w_s[ex]).t()) * tw[t, j]
        tol = ref.abs() * 2 ** -7 + ref.abs().max() * 2 ** -12  # 1 bf16 ulp, see test_fp8_gemm
        assert ((out[p].float() - ref).abs() <= tol).all(), f"pair {p} expert {ex}"


SMALL = [(5, 256, 128, 6, 2), (1, 256, 128, 4, 1), (17, 384, 256, 8, 3)]
DSV3 = [(m, 7168, 2048, 256, 8) for m in (1, 64)]


@pytest.mark.parametrize("m,h,i,e,k", SMALL + (DSV3 if CUDA else []))
def test_fused_moe_matches_reference(m, h, i, e, k):
    # The SiLU output is quantized to fp8 a second time; a one-ulp bf16 difference in the
    # gate/up product can move one of its codes by a whole e4m3 step (2**-3), so the layer
    # is held to a similarity budget (DeepGEMM's FP8 budget, 1e-3), not an ulp bound.
    w13, s13, w2, s2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(2)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=3)
    out = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2)
    ref = ref_fused_moe(x, tw, ids, w13, s13, w2, s2)
    assert not out.float().isnan().any()
    assert calc_diff(out, ref) < 1e-3, calc_diff(out, ref)


def test_fused_moe_ignores_poisoned_padding_and_unused_experts():
    # Experts nobody routes to hold NaN weights: reading them would poison the output.
    e, h, i = 6, 256, 128
    w13, s13, w2, s2 = _experts(e, h, i)
    x = torch.randn(4, h, device=DEV).to(torch.bfloat16)
    ids = torch.tensor([[0, 2]] * 4, device=DEV)
    tw = torch.full((4, 2), 0.5, device=DEV)
    for unused in (1, 3, 4, 5):
        s13[unused] = float("nan")
        s2[unused] = float("nan")
    out = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2)
    ref = ref_fused_moe(x, tw, ids, w13, s13, w2, s2)
    assert calc_diff(out, ref) < 1e-3


def test_fused_moe_rejects_mismatched_experts():
    w13, s13, w2, s2 = _experts(2, 256, 128)
    with pytest.raises(ValueError, match="w13"):
        fp8_fused_moe(torch.zeros(1, 128, dtype=torch.bfloat16, device=DEV),
                      torch.ones(1, 1, device=DEV), torch.zeros(1, 1, dtype=torch.long, device=DEV),
                      w13, s13, w2, s2)


# The prefill path (fp8_moe_prefill): configs that change the code it compiles.
PREFILL_CONFIGS = [PrefillConfig(), PrefillConfig(rescale=False, down_subs=1),
                   PrefillConfig(a_tma=False, block_m=64, persistent=False, group_m=4),
                   PrefillConfig(rescale_first=True)]


@pytest.mark.parametrize("cfg", PREFILL_CONFIGS,
                         ids=["default", "per-step", "ptr-bm64", "rescale-first"])
def test_prefill_path_matches_reference(cfg):
    # Skewed routing: one expert with several blocks, others empty, a partial block each.
    m, h, i, e, k = 21, 256, 256, 5, 2
    w13, s13, w2, s2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(4)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=5, skew=True)
    for unused in set(range(e)) - set(ids.unique().tolist()):
        s13[unused] = float("nan")  # never read
        s2[unused] = float("nan")
    out = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=True, prefill_config=cfg)
    ref = ref_fused_moe(x, tw, ids, w13, s13, w2, s2)
    assert not out.float().isnan().any()
    assert calc_diff(out, ref) < 1e-3, calc_diff(out, ref)


@pytest.mark.skipif(not CUDA, reason="DeepSeek-V3 size: compiled kernels only")
@pytest.mark.parametrize("m,e", [(512, 32), (4096, 256), (2048, 32)])
def test_prefill_path_dsv3_size(m, e):
    # Whole batch through the prefill path; the fp32 loop reference on 12 of its tokens
    # (its cost is per pair), and the decode kernel on all of them.
    h, i, k = 7168, 2048, 8
    w13, s13, w2, s2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(6)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=7)
    out = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=True)
    rows = torch.linspace(0, m - 1, 12, device=DEV).long()
    ref = ref_fused_moe(x[rows], tw[rows], ids[rows], w13, s13, w2, s2)
    assert calc_diff(out[rows], ref) < 1e-3, calc_diff(out[rows], ref)
    dec = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=False)
    assert calc_diff(out, dec) < 1e-4, calc_diff(out, dec)


def test_prefill_path_chosen_by_shape_only():
    assert not use_prefill_path(8 * 64, 256, 7168, 2048)       # decode batch
    assert use_prefill_path(8 * 8192, 256, 7168, 2048)
    assert not use_prefill_path(8 * 8192, 256, 7000, 2048)     # H not whole 128-blocks


@pytest.mark.skipif(not CUDA, reason="Gluon warp-specialized kernel: sm_90 only, no interpreter")
@pytest.mark.parametrize("m,e", [(2048, 32), (4096, 256)])
def test_gluon_ws_prefill_path_dsv3_size(m, e):
    # Last in the file: a kernel that deadlocks would stall the run after the others.
    h, i, k = 7168, 2048, 8
    w13, s13, w2, s2 = _experts(e, h, i)
    g = torch.Generator(device=DEV).manual_seed(8)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=9)
    cfg = PrefillConfig(gluon_ws=True, down_stages=4)
    out = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=True, prefill_config=cfg)
    rows = torch.linspace(0, m - 1, 12, device=DEV).long()
    ref = ref_fused_moe(x[rows], tw[rows], ids[rows], w13, s13, w2, s2)
    assert calc_diff(out[rows], ref) < 1e-3, calc_diff(out[rows], ref)
    triton_path = fp8_fused_moe(x, tw, ids, w13, s13, w2, s2, prefill=True)
    assert calc_diff(out, triton_path) < 1e-4, calc_diff(out, triton_path)
