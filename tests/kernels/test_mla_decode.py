"""Paged MLA decode against dense attention on the gathered latents and the naive MLA math.

CPU: the Triton interpreter at small sizes (rank 64 + rope 16, a few heads). CUDA: real sizes
(rank 512 + rope 64, 16 and 128 heads) and the autotuned kernel. Unused pages and the unused tail
of a sequence's last page hold NaN, so any read past a sequence's length shows up.

Tolerance in bf16 units: |out - ref| <= 2 ulp relative (2/128 |ref|) + half an ulp of the largest
value |v|max / 256. The kernel rounds the softmax weights to bf16 before the value product (as any
bf16 tensor-core kernel does), which is the absolute term; lse is fp32 throughout (1e-5 relative).
"""

import math

import pytest
import torch
import triton

from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits
from ds_plugin.kernels.mla_kv_cache import mla_kv_cache_write
from ds_plugin.kernels.ref_mla import (absorb_query, ref_mla_decode, ref_mla_naive,
                                       split_kv_b_proj, unabsorb_output)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Fixed configs keep compiles few (each costs GPU time). On CUDA: the shipped tiles of each cache
# dtype (16-row members of the autotune spaces); every autotune config is run by
# test_every_shipped_config_real_size_128_heads and the autotuned path by test_autotuned_path.
CONFIG = ({"BLOCK_H": 16, "BLOCK_N": 64, "num_warps": 8, "num_stages": 5} if CUDA
          else {"BLOCK_H": 16, "BLOCK_N": 16})
CONFIG_FP8 = ({"BLOCK_H": 16, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2} if CUDA
              else {"BLOCK_H": 16, "BLOCK_N": 16})
SMALL = dict(rank=64, rope=16, heads=8)  # s_q 3 -> 24 rows: two head blocks of 16
REAL = dict(rank=512, rope=64, heads=16)


def _fill_cache(seq_lens, page, rank, rope, cache_dtype, gen, k_scale=None):
    """A shuffled paged cache holding each sequence's latents; everything else is NaN."""
    pages_per_seq = [max(1, math.ceil(n / page)) for n in seq_lens]
    blocks = sum(pages_per_seq) + 2  # two never-referenced NaN blocks
    order = torch.randperm(blocks, generator=gen)
    width = max(pages_per_seq) + 1
    # Unused block-table entries point at garbage block ids: the kernel must not follow them.
    table = torch.full((len(seq_lens), width), 10**6, dtype=torch.int32)
    cache = torch.full((blocks, page, rank + rope), float("nan")).to(cache_dtype).to(DEVICE)
    latents, used = [], 0
    for b, n in enumerate(seq_lens):
        table[b, :pages_per_seq[b]] = order[used:used + pages_per_seq[b]].int()
        used += pages_per_seq[b]
        kv_c = torch.randn(n, rank, generator=gen).to(torch.bfloat16).to(DEVICE)
        k_pe = torch.randn(n, rope, generator=gen).to(torch.bfloat16).to(DEVICE)
        pos = torch.arange(n)
        slots = (table[b, pos // page].long() * page + pos % page).to(DEVICE)
        mla_kv_cache_write(kv_c, k_pe, cache, slots, k_scale)
        latents.append((kv_c, k_pe))
    return cache, table.to(DEVICE), latents


def _check(out, lse, ref_out, ref_lse, vmax):
    assert not out.isnan().any() and not lse.isnan().any()
    err = (out.float() - ref_out).abs()
    bound = 2 / 128 * ref_out.abs() + vmax / 256
    assert (err <= bound).all(), f"max err {err.max().item():.4g}, worst excess {(err - bound).max().item():.4g}"
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    fin = ref_lse.isfinite()
    torch.testing.assert_close(lse[fin], ref_lse[fin], rtol=1e-5, atol=1e-5)


# (seq_lens, s_q, page, split counts). Lengths 0/1, ragged, page boundaries for pages of 16 and
# 64 and partial last pages; s_q 3 is MTP verification (causal within the new tokens, and s_q >
# seq_len: rows before the cache start see nothing). BLOCK_N 64 tiles one page of 64 (one
# block-table load per tile) but spans four pages of 16 (one load per row). One split writes
# the output directly, more go through the merge.
CASES = [
    ([0, 1, 2, 16, 17, 15, 64, 65, 130], 1, 64, (1, 3)),
    ([0, 1, 2, 16, 17, 15, 64, 65, 130], 1, 16, (3,)),
    ([2, 40, 19, 0, 70], 3, 16, (1, 3)),
]


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("seq_lens,s_q,page,splits", CASES, ids=["sq1-page64", "sq1-page16", "sq3-page16"])
def test_decode_matches_dense_reference(page, fp8, seq_lens, s_q, splits):
    dims = REAL if CUDA else SMALL
    rank, rope, heads = dims["rank"], dims["rope"], dims["heads"]
    gen = torch.Generator().manual_seed(sum(seq_lens) * 7 + s_q + page)
    k_scale = torch.tensor([0.02], device=DEVICE) if fp8 else None
    cache, table, _ = _fill_cache(seq_lens, page, rank, rope,
                                  torch.float8_e4m3fn if fp8 else torch.bfloat16, gen, k_scale)
    q = torch.randn(len(seq_lens), s_q, heads, rank + rope, generator=gen).to(torch.bfloat16).to(DEVICE)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = (rank + rope) ** -0.5
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, scale, rank, k_scale)
    for num_splits in splits:
        out, lse = mla_decode(q, cache, table, seq, scale, rank, k_scale=k_scale,
                              num_splits=num_splits, config=CONFIG_FP8 if fp8 else CONFIG)
        _check(out, lse, ref_out, ref_lse, 5.0)


# The opt-in tile paths (the shipped ones run above): e4m3 read as int32 words and converted by
# the hardware pair converter (FP8_CVT 4, inline PTX; under the interpreter the kernel runs the
# integer-op converter 2 on the same words instead), with one block-table load per tile or per
# row (pages smaller than the tile); TMA (full tiles through device-side tensor descriptors,
# scratch from triton's allocator hook).
LOAD_PATHS = [pytest.param(False, dict(TMA=True), id="bf16-tma"),
              pytest.param(True, dict(PAGED_TILE=True, FP8_CVT=4), id="fp8-tile-words"),
              pytest.param(True, dict(PAGED_TILE=False, FP8_CVT=4), id="fp8-rows-words"),
              pytest.param(True, dict(PAGED_TILE=True, FP8_CVT=4, TMA=True), id="fp8-tma-words")]


@pytest.mark.parametrize("fp8,path", LOAD_PATHS)
def test_every_load_path(fp8, path):
    if path.get("TMA"):
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=DEVICE))
    dims = REAL if CUDA else SMALL
    rank, rope, heads = dims["rank"], dims["rope"], dims["heads"]
    gen = torch.Generator().manual_seed(29)
    seq_lens, s_q = [70, 1, 33, 0], 2
    k_scale = torch.tensor([0.03], device=DEVICE) if fp8 else None
    cache, table, _ = _fill_cache(seq_lens, 64, rank, rope,
                                  torch.float8_e4m3fn if fp8 else torch.bfloat16, gen, k_scale)
    q = torch.randn(len(seq_lens), s_q, heads, rank + rope, generator=gen).to(torch.bfloat16).to(DEVICE)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, 0.1, rank, k_scale)
    out, lse = mla_decode(q, cache, table, seq, 0.1, rank, k_scale=k_scale, num_splits=2,
                          config=dict(CONFIG, **path))
    _check(out, lse, ref_out, ref_lse, 5.0)


# Triton's cast (the default) and the word converter: inline PTX on CUDA, integer ops under the
# interpreter (which runs no PTX).
@pytest.mark.parametrize("cvt", [0, 4 if CUDA else 2])
def test_every_e4m3_code_decodes_exactly(cvt):
    # One cached token per sequence: softmax weight exactly 1, so out = the dequantised latent,
    # and every finite e4m3 value (254 codes, subnormals included) is exact in bf16: bitwise.
    rank, rope = (REAL if CUDA else SMALL)["rank"], (REAL if CUDA else SMALL)["rope"]
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F].to(torch.uint8)  # drop the two NaN codes
    batch = -(-codes.numel() // rank)
    latent = codes.repeat(batch * rank // codes.numel() + 1)[:batch * rank].view(batch, rank)
    rows = torch.cat([latent, torch.zeros(batch, rope, dtype=torch.uint8)], dim=1)
    cache = rows.view(batch, 1, rank + rope).to(DEVICE)
    k_scale = torch.tensor([1.0], device=DEVICE)
    table = torch.arange(batch, dtype=torch.int32, device=DEVICE)[:, None]
    seq = torch.ones(batch, dtype=torch.int32, device=DEVICE)
    q = torch.zeros(batch, 1, 2, rank + rope, dtype=torch.bfloat16, device=DEVICE)
    out, _ = mla_decode(q, cache, table, seq, 0.1, rank, k_scale=k_scale,
                        config=dict(CONFIG, BLOCK_N=16, PAGED_TILE=False, FP8_CVT=cvt))
    want = cache.view(torch.float8_e4m3fn)[:, 0, :rank].float()
    assert torch.equal(out[:, 0, 0].float(), want) and torch.equal(out[:, 0, 1].float(), want)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_autotuned_path(fp8):
    # The shapes of the first dense case, so on CUDA the autotuner's configs that the fixed-config
    # tests already compiled come from Triton's cache. config=None autotunes on CUDA; the
    # interpreter is far too slow to autotune, so it runs the tile the autotuner keeps there.
    dims = REAL if CUDA else SMALL
    rank, rope, heads = dims["rank"], dims["rope"], dims["heads"]
    seq_lens = CASES[0][0]
    gen = torch.Generator().manual_seed(23)
    k_scale = torch.tensor([0.02], device=DEVICE) if fp8 else None
    cache, table, _ = _fill_cache(seq_lens, 64, rank, rope,
                                  torch.float8_e4m3fn if fp8 else torch.bfloat16, gen, k_scale)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    q = torch.randn(len(seq_lens), 1, heads, rank + rope, generator=gen).to(torch.bfloat16).to(DEVICE)
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, 0.1, rank, k_scale)
    for splits in (1, 3):
        out, lse = mla_decode(q, cache, table, seq, 0.1, rank, k_scale=k_scale, num_splits=splits,
                              config=None if CUDA else {"BLOCK_H": 16, "BLOCK_N": 16})
        _check(out, lse, ref_out, ref_lse, 5.0)


def test_empty_batch_and_workspace_reuse():
    gen = torch.Generator().manual_seed(5)
    cache, table, _ = _fill_cache([20, 3], 16, 64, 16, torch.bfloat16, gen)
    seq = torch.tensor([20, 3], dtype=torch.int32, device=DEVICE)
    q = torch.randn(2, 1, 4, 80, generator=gen).to(torch.bfloat16).to(DEVICE)
    ws = torch.full((2 * 4 * 4 * 65 + 7,), float("nan"), device=DEVICE)  # poisoned, oversize
    out, lse = mla_decode(q, cache, table, seq, 0.1, 64, num_splits=4, workspace=ws, config=CONFIG)
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, 0.1, 64)
    _check(out, lse, ref_out, ref_lse, 5.0)
    out0, lse0 = mla_decode(q[:0], cache, table[:0], seq[:0], 0.1, 64, config=CONFIG)
    assert out0.shape == (0, 1, 4, 64) and lse0.shape == (0, 1, 4)


def test_absorbed_decode_equals_naive_mla():
    # The whole absorbed path (fold W_UK into q, attend in latent space, apply W_UV) against
    # decompressed per-head K/V attention, for two new tokens per sequence.
    rank, rope, heads, nope, v_dim = 64, 16, 4, 32, 32
    gen = torch.Generator().manual_seed(11)
    seq_lens, s_q = [9, 18], 2
    cache, table, latents = _fill_cache(seq_lens, 16, rank, rope, torch.bfloat16, gen)
    kv_b = (torch.randn(heads * (nope + v_dim), rank, generator=gen) / rank**0.5).to(DEVICE)
    w_uk, w_uv = split_kv_b_proj(kv_b, heads, nope, v_dim)
    q_nope = torch.randn(2, s_q, heads, nope, generator=gen).to(DEVICE)
    q_pe = torch.randn(2, s_q, heads, rope, generator=gen).to(DEVICE)
    scale = (nope + rope) ** -0.5
    q = absorb_query(q_nope, q_pe, w_uk).to(torch.bfloat16)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    out, _ = mla_decode(q, cache, table, seq, scale, rank, num_splits=2, config=CONFIG)
    ours = unabsorb_output(out, w_uv)
    for b, n in enumerate(seq_lens):
        naive = ref_mla_naive(q_nope[b], q_pe[b], *latents[b], kv_b, scale, q_offset=n - s_q)
        # bf16 query and output roundings, carried through two 64-wide projections.
        torch.testing.assert_close(ours[b], naive, rtol=4 / 128, atol=4 / 128)


def test_num_splits_policy():
    assert mla_decode_num_splits(1, 16, 32768, 132) == 64  # batch 1: split to fill the GPU
    assert mla_decode_num_splits(128, 128, 32768, 132) == 2  # 256 programs: 2 splits make 4 a SM
    assert mla_decode_num_splits(1, 128, 300, 132) == 2  # short context: >= 256 keys a split


def test_bad_input_names_the_culprit():
    gen = torch.Generator().manual_seed(3)
    cache, table, _ = _fill_cache([4], 16, 64, 16, torch.bfloat16, gen)
    seq = torch.tensor([4], dtype=torch.int32, device=DEVICE)
    q = torch.randn(1, 1, 4, 80, generator=gen).to(torch.bfloat16).to(DEVICE)
    with pytest.raises(ValueError, match="kv_cache"):
        mla_decode(q, cache.float(), table, seq, 0.1, 64)
    with pytest.raises(ValueError, match="k_scale"):
        mla_decode(q, cache.to(torch.float8_e4m3fn), table, seq, 0.1, 64)
    with pytest.raises(ValueError, match="seq_lens"):
        mla_decode(q, cache, table, seq.repeat(2), 0.1, 64)
    with pytest.raises(ValueError, match="workspace"):
        mla_decode(q, cache, table, seq, 0.1, 64, num_splits=2, workspace=torch.empty(3, device=DEVICE))
    with pytest.raises(ValueError, match="BLOCK_N"):
        mla_decode(q, cache, table, seq, 0.1, 64, config={"BLOCK_H": 16})
    with pytest.raises(ValueError, match="TMA"):
        mla_decode(q, cache.to(torch.float8_e4m3fn), table, seq, 0.1, 64, k_scale=torch.ones(1, device=DEVICE),
                   config={"BLOCK_H": 16, "BLOCK_N": 16, "TMA": True, "FP8_CVT": 0})


@pytest.mark.skipif(not CUDA, reason="real-size run of every autotune config needs CUDA")
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_every_shipped_config_real_size_128_heads(fp8):
    from ds_plugin.kernels.mla_decode import _BF16_CONFIGS, _FP8_CONFIGS

    gen = torch.Generator().manual_seed(17)
    seq_lens, s_q = [1, 100, 1000, 4097], 2
    k_scale = torch.tensor([0.02], device=DEVICE) if fp8 else None
    cache, table, _ = _fill_cache(seq_lens, 64, 512, 64,
                                  torch.float8_e4m3fn if fp8 else torch.bfloat16, gen, k_scale)
    q = torch.randn(4, s_q, 128, 576, generator=gen).to(torch.bfloat16).to(DEVICE)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, 576**-0.5, 512, k_scale)
    for cfg in _FP8_CONFIGS if fp8 else _BF16_CONFIGS:
        # Split: the 128-head launches of real batches (the direct store is covered above).
        config = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        out, lse = mla_decode(q, cache, table, seq, 576**-0.5, 512, k_scale=k_scale,
                              num_splits=5, config=config)
        _check(out, lse, ref_out, ref_lse, 5.0)
