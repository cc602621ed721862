"""Our kernels at the per-rank shapes of tensor parallelism: TP 2, 4, 8 against TP=1 and fp32.

Each case builds the TP=1 problem, slices the weights as vLLM's loaders give them to rank r
(tests/helpers/tp_shard.py, checked against vLLM's own loaders in
tests/quant/test_tp_loading.py), runs every rank through the served entry point, combines
the ranks as the model does and compares with the TP=1 run of the same kernel and with the
fp32 twin. CUDA: DeepSeek-V3 sizes. CPU: the Triton interpreter at small sizes with the
same per-rank block structure (at TP 8 every rank keeps at least one 128-block).

Bounds, in bf16 units (F = 2**-12 max|ref|, the suite's floor for sums that cancel to near
zero, test_fp8_gemm). R is one kernel store's rounding: half an ulp (at most 2**-8 of the
value) on the GPU; the Triton interpreter truncates fp32 -> bf16, so R = 2**-7 on CPU. A
torch round (the all-reduce's sum) is half an ulp, H = 2**-8. Below, 2**-8 stands for R
where a kernel rounded.
- Column-parallel (q_b_proj, kv_b_proj) and merged (gate_up): every rank quantizes the same
  activations, and its rows are a subset of TP=1's, so an output is the same fp32 sum in
  another order, rounded once: |tp - tp1| <= 2**-8 (|tp| + |tp1|) + F (one ulp).
- Row-parallel (o_proj, down_proj): rank r's activation slice quantizes to exactly TP=1's
  groups (asserted bitwise), but each rank rounds its partial sum p_r to bf16 before the
  all-reduce (an fp32 sum here, as vLLM's custom all-reduce does, rounded once). Against
  TP=1: |tp - tp1| <= 2**-8 (|tp| + |tp1| + sum_r |p_r|) + F; against fp32 the |tp1| term
  goes. This is a real difference from TP=1, up to half an ulp of every partial.
- MoE (fp8 and W4A8 experts, intermediate dim sharded): each rank's partial passes through
  the kernels' own bf16 roundings (pair rows, combine) before the sum, so the layer is held
  to similarity budgets (fp8_format.calc_diff): 1e-3 against fp32 for every rank's partial
  and for the sum (the suite's FP8 budget), 1e-4 between the TP sum and TP=1 (no fp8 code
  should change: rank r's SiLU groups are TP=1's groups, so only roundings of partials differ).
- MLA decode (heads split): heads are independent, so with TP=1's split count every rank's
  output and lse are TP=1's slice bitwise; with the rank's own (served) split count, the
  bound of test_mla_decode against the fp32 reference.
"""

import pytest
import torch

from ds_plugin.kernels.fp8_format import calc_diff
from ds_plugin.kernels.fp8_gemm import fp8_block_gemm_nt
from ds_plugin.kernels.fp8_linear import fp8_linear, torch_path_agrees
from ds_plugin.kernels.fp8_moe import fp8_fused_moe
from ds_plugin.kernels.fp8_quant import fp8_act_quant
from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits
from ds_plugin.kernels.ref_fp8 import random_fp8_weight, ref_block_gemm_nt, ref_fused_moe
from ds_plugin.kernels.ref_mla import ref_mla_decode
from ds_plugin.kernels.ref_w4a8 import random_int4_weight, ref_w4a8_fused_moe
from ds_plugin.kernels.w4a8_moe import kernel_weights, w4a8_fused_moe
from tests.helpers import tp_shard

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
TPS = (2, 4, 8)
HALF_ULP = 2 ** -8
# A kernel's fp32 -> bf16 store: round-to-nearest on the GPU (half an ulp, at most 2**-8 of
# the value), truncation under the Triton interpreter (measured: every output of
# fp8_block_gemm_nt equals the fp32 reference truncated), up to a whole ulp (2**-7).
KERNEL_ROUND = HALF_ULP if CUDA else 2 ** -7

# name -> (kind, output sizes, K). Real: DeepSeek-V3; small: the same per-rank block counts
# scaled down (18432 / 8 = 18 blocks of down_proj becomes 3072 / 8 = 3).
LINEARS = {
    "q_b_proj": ("column", [24576], 1536, [3072], 256),
    "kv_b_proj": ("column", [32768], 512, [2048], 256),
    "mlp.gate_up_proj": ("merged", [18432] * 2, 7168, [1024] * 2, 384),
    "shared_experts.gate_up_proj": ("merged", [2048] * 2, 7168, [1024] * 2, 256),
    "o_proj": ("row", [7168], 16384, [256], 2048),
    "mlp.down_proj": ("row", [7168], 18432, [256], 3072),
    "shared_experts.down_proj": ("row", [7168], 2048, [384], 1024),
}
LINEAR_M = (1, 300) if CUDA else (1, 37)
# (hidden, intermediate, experts, top_k), batches
MOE = (7168, 2048, 256, 8) if CUDA else (128, 1024, 4, 2)
MOE_M = (1, 64) if CUDA else (5,)
PER_RANK_REF_M = 16  # the fp32 loop per rank only for batches up to this (GPU time)
W4A8_SCALES = {"dynamic": (None, None), "static": (0.02, 0.004)}


def _gen(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def _served_linear(x, w, s):
    # What Fp8Linear does at load (torch's path only where it agrees) and per call.
    return fp8_linear(x, w, s, torch_ok=w.is_cuda and torch_path_agrees(w, s, x.dtype))


def _assert_bound(name, got, want, bound):
    got, want = got.float(), want.float()
    assert not got.isnan().any(), f"{name}: NaN"
    excess = (got - want).abs() - bound
    bad = (excess > 0).nonzero()
    assert bad.numel() == 0, (
        f"{name}: {bad.shape[0]} of {got.numel()} outside the bound, worst excess "
        f"{excess.max().item():.3g}; first {bad[0].tolist()}: {got[tuple(bad[0])].item()} vs "
        f"{want[tuple(bad[0])].item()}")


def _floor(ref):
    return ref.abs().max() * 2 ** -12


def _layer(name):
    kind, outs, k, small_outs, small_k = LINEARS[name]
    return (kind, outs, k) if CUDA else (kind, small_outs, small_k)


def _column_index(outs, tp, r):
    """Rank r's output columns in TP=1's layout (each merged part split on its own)."""
    idx, off = [], 0
    for n in outs:
        idx.append(torch.arange(off + r * (n // tp), off + (r + 1) * (n // tp)))
        off += n
    return torch.cat(idx).to(DEV)


@pytest.mark.parametrize("m", LINEAR_M)
@pytest.mark.parametrize("name", [n for n, v in LINEARS.items() if v[0] != "row"])
def test_column_parallel_ranks_concatenate_to_tp1(name, m):
    kind, outs, k = _layer(name)
    g = _gen(len(name) + m)
    parts = [random_fp8_weight((n, k), DEV, generator=g) for n in outs]
    w1, s1 = tp_shard.merged(parts, 1, 0)
    x = torch.randn(m, k, generator=g, device=DEV).to(torch.bfloat16)
    a, a_s = fp8_act_quant(x)  # every rank quantizes the same replicated input
    ref = ref_block_gemm_nt(a, a_s, w1, s1, out_dtype=torch.float32)
    tp1 = {"served": _served_linear(x, w1, s1), "triton": fp8_block_gemm_nt(a, a_s, w1, s1)}
    floor = _floor(ref)
    for path, y1 in tp1.items():
        _assert_bound(f"{name} TP=1 {path} vs fp32", y1, ref,
                      KERNEL_ROUND * 2 * y1.float().abs() + floor)
    for tp in TPS:
        got = {p: torch.full_like(y, float("nan")) for p, y in tp1.items()}
        for r in range(tp):
            w, s = tp_shard.merged(parts, tp, r)
            cols = _column_index(outs, tp, r)
            got["served"][:, cols] = _served_linear(x, w, s)
            got["triton"][:, cols] = fp8_block_gemm_nt(a, a_s, w, s)
        for path, y in got.items():
            y1 = tp1[path]
            tag = f"{name} M={m} TP={tp} {path}"
            _assert_bound(f"{tag} vs TP=1", y, y1,
                          KERNEL_ROUND * (y.float().abs() + y1.float().abs()) + floor)
            _assert_bound(f"{tag} vs fp32", y, ref, KERNEL_ROUND * 2 * y.float().abs() + floor)


@pytest.mark.parametrize("m", LINEAR_M)
@pytest.mark.parametrize("name", [n for n, v in LINEARS.items() if v[0] == "row"])
def test_row_parallel_partials_sum_to_tp1(name, m):
    _, (n,), k = _layer(name)
    g = _gen(len(name) + m)
    w1, s1 = random_fp8_weight((n, k), DEV, generator=g)
    x = torch.randn(m, k, generator=g, device=DEV).to(torch.bfloat16)
    a, a_s = fp8_act_quant(x)
    ref = ref_block_gemm_nt(a, a_s, w1, s1, out_dtype=torch.float32)
    tp1 = {"served": _served_linear(x, w1, s1), "triton": fp8_block_gemm_nt(a, a_s, w1, s1)}
    floor = _floor(ref)
    for tp in TPS:
        kr = k // tp
        parts = {p: [] for p in tp1}
        for r in range(tp):
            w, s = tp_shard.row(w1, s1, tp, r)
            xr = x[:, r * kr:(r + 1) * kr].contiguous()  # the previous layer's rank-r output
            ar, ar_s = fp8_act_quant(xr)
            # The rank's 128-groups are TP=1's groups: the same codes and scales, bitwise.
            assert torch.equal(ar.view(torch.uint8), a[:, r * kr:(r + 1) * kr].view(torch.uint8))
            assert torch.equal(ar_s, a_s[:, r * kr // 128:(r + 1) * kr // 128])
            parts["served"].append(_served_linear(xr, w, s))
            parts["triton"].append(fp8_block_gemm_nt(ar, ar_s, w, s))
        for path, ps in parts.items():
            y = torch.stack(ps).float().sum(0).to(torch.bfloat16)  # the all-reduce
            partial_mass = torch.stack(ps).float().abs().sum(0)
            y1 = tp1[path]
            tag = f"{name} M={m} TP={tp} {path}"
            # y: torch's round-to-nearest of the sum; y1 and the partials: the kernel's.
            _assert_bound(f"{tag} vs TP=1", y, y1, HALF_ULP * y.float().abs() + KERNEL_ROUND * (
                y1.float().abs() + partial_mass) + floor)
            _assert_bound(f"{tag} vs fp32", y, ref,
                          HALF_ULP * y.float().abs() + KERNEL_ROUND * partial_mass + floor)


def _routing(m, e, k, seed):
    logits = torch.randn(m, e, generator=_gen(seed), device=DEV)
    return logits.softmax(-1).topk(k)


def _moe_ranks(run, ref, w13, s13, w2, s2, tp, with_ref, convert=lambda w: w):
    """Rank r's partial of the layer for each r; calc_diff of each against its fp32 twin."""
    outs = []
    for r in range(tp):
        shard = (tp_shard.experts_w13(w13, tp, r), tp_shard.experts_w13(s13, tp, r),
                 tp_shard.experts_w2(w2, tp, r), tp_shard.experts_w2(s2, tp, r))
        out = run(convert(shard[0]), shard[1], convert(shard[2]), shard[3])
        assert not out.float().isnan().any(), f"TP={tp} rank {r}: NaN"
        if with_ref:
            d = calc_diff(out, ref(*shard))
            assert d < 1e-3, f"TP={tp} rank {r} vs its fp32 twin: calc_diff {d:.3g}"
        outs.append(out)
    return torch.stack(outs).float().sum(0).to(torch.bfloat16)  # the all-reduce


def _check_moe(tag, y, y1, ref):
    assert calc_diff(y1, ref) < 1e-3, f"{tag} TP=1 vs fp32: {calc_diff(y1, ref):.3g}"
    assert calc_diff(y, ref) < 1e-3, f"{tag} vs fp32: {calc_diff(y, ref):.3g}"
    assert calc_diff(y, y1) < 1e-4, f"{tag} vs TP=1: {calc_diff(y, y1):.3g}"


@pytest.mark.parametrize("m", MOE_M)
def test_fp8_moe_intermediate_shards_sum_to_tp1(m):
    h, i, e, k = MOE
    g = _gen(7)
    w13, s13 = random_fp8_weight((e, 2 * i, h), DEV, generator=g)
    w2, s2 = random_fp8_weight((e, h, i), DEV, generator=g)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=m)

    def run(*w):
        return fp8_fused_moe(x, tw, ids, *w)

    def ref(*w):
        return ref_fused_moe(x, tw, ids, *w)

    y1, r1 = run(w13, s13, w2, s2), ref(w13, s13, w2, s2)
    for tp in TPS:
        y = _moe_ranks(run, ref, w13, s13, w2, s2, tp, m <= PER_RANK_REF_M)
        _check_moe(f"fp8 MoE M={m} TP={tp}", y, y1, r1)


@pytest.mark.parametrize("scales", list(W4A8_SCALES))
@pytest.mark.parametrize("m", MOE_M)
def test_w4a8_moe_group_aligned_shards_sum_to_tp1(m, scales):
    # TP splits w2's packed K: I/tp int4 values, I/(2 tp) bytes, I/(128 tp) scale groups per
    # rank; each rank converts its own shard to the kernel layout at load.
    h, i, e, k = MOE
    g = _gen(11)
    w13, s13 = random_int4_weight((e, 2 * i, h), DEV, generator=g)
    w2, s2 = random_int4_weight((e, h, i), DEV, generator=g)
    x = torch.randn(m, h, generator=g, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(m, e, k, seed=m + 1)
    # Static scales are one per tensor, the max over all experts: every rank has the same.
    a13, a2 = (None if s is None else torch.tensor([s], device=DEV) for s in W4A8_SCALES[scales])

    def run(*w):
        return w4a8_fused_moe(x, tw, ids, *w, a13, a2)

    def ref(*w):
        return ref_w4a8_fused_moe(x, tw, ids, *w, a13, a2)

    y1 = run(kernel_weights(w13), s13, kernel_weights(w2), s2)
    r1 = ref(w13, s13, w2, s2)
    for tp in TPS:
        y = _moe_ranks(run, ref, w13, s13, w2, s2, tp, m <= PER_RANK_REF_M, kernel_weights)
        _check_moe(f"W4A8 {scales} MoE M={m} TP={tp}", y, y1, r1)


def test_w4a8_refuses_a_rank_shard_that_splits_an_int4_group():
    # TP 32 on DeepSeek's 2048-wide experts: 64 values per rank, half a 128-group (the
    # quant method refuses the layer when it is built, tests/quant/test_tp_loading.py;
    # the kernel, too).
    h, i, e, tp = 256, 2048, 2, 32
    w13, s13 = random_int4_weight((e, 2 * i, h), DEV, generator=_gen(3))
    w2 = torch.zeros(e, h, i // 2, dtype=torch.int8, device=DEV)
    s2 = torch.ones(e, h, i // 128, device=DEV)
    shard = (kernel_weights(tp_shard.experts_w13(w13, tp, 0)), tp_shard.experts_w13(s13, tp, 0),
             kernel_weights(tp_shard.experts_w2(w2, tp, 0)), tp_shard.experts_w2(s2, tp, 0))
    assert shard[2].shape == (e, h, 32) and shard[3].shape == (e, h, 0)
    x = torch.randn(2, h, device=DEV).to(torch.bfloat16)
    tw, ids = _routing(2, e, 1, seed=0)
    with pytest.raises(ValueError, match=r"w \(2, 256, 32\).*K a multiple of 128"):
        w4a8_fused_moe(x, tw, ids, *shard)


def _paged_cache(seq_lens, page, dim, gen, dtype, k_scale):
    """Shuffled pages of random latents; unused pages and page tails NaN."""
    pages = [max(1, -(-n // page)) for n in seq_lens]
    order = torch.randperm(sum(pages) + 1, generator=gen)
    table = torch.full((len(seq_lens), max(pages)), 10 ** 6, dtype=torch.int32)
    cache = torch.full((sum(pages) + 1, page, dim), float("nan"))
    used = 0
    for b, n in enumerate(seq_lens):
        table[b, :pages[b]] = order[used:used + pages[b]].int()
        used += pages[b]
        rows = torch.randn(n, dim, generator=gen)
        pos = torch.arange(n)
        cache[table[b, pos // page].long(), pos % page] = rows
    if dtype == torch.float8_e4m3fn:
        cache = (cache / k_scale).clamp(-448, 448)
    return cache.to(dtype).to(DEV), table.to(DEV)


def _same_heads(name, got, want, cpu_rtol, cpu_atol):
    """Bitwise on the GPU. The interpreter's tl.dot (numpy) may round a head's row
    differently at another row of the BLOCK_H tile (measured: lse off by 6e-8 .. 9e-8, an
    fp32 ulp of its max or sum term, at TP 2 and 4), so on CPU: one bf16 ulp of out, a few
    fp32 ulps of lse (absolute: lse = max + log(sum) carries its terms' absolute error)."""
    if CUDA:
        assert torch.equal(got, want), f"{name} differs from TP=1"
        return
    assert torch.equal(got.isinf(), want.isinf()), f"{name}: -inf rows differ from TP=1"
    fin = want.isfinite()
    torch.testing.assert_close(got[fin].float(), want[fin].float(), rtol=cpu_rtol,
                               atol=cpu_atol,
                               msg=lambda m: f"{name} vs TP=1: {m}")


# (rank, rope, heads, batch lengths, s_q values, config, SMs the split policy sizes for)
MLA = (dict(rank=512, rope=64, heads=128, page=64, s_q=(1,), cache=("bf16",),
            lens=[0, 1, 2, 63, 64, 65, 127, 500, 1000, 2047, 2048, 3000, 4097, 5000, 7000, 8192],
            config={"BLOCK_H": 16, "BLOCK_N": 64, "num_warps": 8, "num_stages": 5})
       if CUDA else
       dict(rank=64, rope=16, heads=16, page=16, s_q=(1, 3), cache=("bf16", "fp8"),
            lens=[0, 1, 17, 40, 300], config={"BLOCK_H": 16, "BLOCK_N": 16}))


@pytest.mark.parametrize("cache_dtype", MLA["cache"])
@pytest.mark.parametrize("s_q", MLA["s_q"])
def test_mla_decode_head_shards_are_tp1_slices(s_q, cache_dtype):
    rank, rope, heads = MLA["rank"], MLA["rope"], MLA["heads"]
    gen = torch.Generator().manual_seed(s_q)
    fp8 = cache_dtype == "fp8"
    k_scale = torch.tensor([0.02], device=DEV) if fp8 else None
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    cache, table = _paged_cache(MLA["lens"], MLA["page"], rank + rope, gen, dtype,
                                0.02 if fp8 else None)
    seq = torch.tensor(MLA["lens"], dtype=torch.int32, device=DEV)
    q = torch.randn(len(MLA["lens"]), s_q, heads, rank + rope, generator=gen)
    q = q.to(torch.bfloat16).to(DEV)
    scale = (rank + rope) ** -0.5
    sms = torch.cuda.get_device_properties(0).multi_processor_count if CUDA else 132
    batch, longest = len(MLA["lens"]), max(MLA["lens"])

    def decode(qr, splits):
        return mla_decode(qr, cache, table, seq, scale, rank, k_scale=k_scale,
                          num_splits=splits, config=MLA["config"])

    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, scale, rank, k_scale)
    splits1 = mla_decode_num_splits(batch, s_q * heads, longest, sms)
    out1, lse1 = decode(q, splits1)
    served_splits = set()
    for tp in TPS:
        h = heads // tp
        splits = mla_decode_num_splits(batch, s_q * h, longest, sms)  # what rank r runs
        served_splits.add(splits)
        for r in range(tp):
            hs = slice(r * h, (r + 1) * h)
            qr = tp_shard.heads(q, tp, r)
            out, lse = decode(qr, splits1)
            _same_heads(f"TP={tp} rank {r} out", out, out1[:, :, hs], 2 ** -7, 0.0)
            _same_heads(f"TP={tp} rank {r} lse", lse, lse1[:, :, hs], 2 ** -22, 2 ** -20)
            out, lse = decode(qr, splits)
            want = ref_out[:, :, hs]
            _assert_bound(f"TP={tp} rank {r} ({splits} splits) vs fp32", out, want,
                          2 / 128 * want.abs() + 5.0 / 256)
            fin = ref_lse[:, :, hs].isfinite()
            assert torch.equal(lse.isinf(), ~fin)
            torch.testing.assert_close(lse[fin], ref_lse[:, :, hs][fin], rtol=1e-5, atol=1e-5)
    if CUDA:  # the served split count changes with the heads per rank at these sizes
        assert served_splits != {splits1}, (splits1, served_splits)
