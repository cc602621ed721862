"""Every MLA decode adapter that this machine can run, against the fp32 reference (ref_mla).

One suite for all: kv_len 0, 1, 2; page boundaries; ragged batches; several query tokens per
request (causal among them, MTP); unused pages, the unused tail of a last page and block-table
entries past a request's pages all poisoned (NaN rows, out-of-range block ids), so any read past
a request's length shows; LSE checked; BF16 and FP8 (per-tensor e4m3) caches.

CUDA: real sizes (rank 512 + rope 64, 16 and 128 heads, pages of 64 and 1), every adapter
whose library imports. CPU: the torch adapter and the Triton adapter under the interpreter
(small latents: the interpreter is slow). An adapter that cannot serve a combination here is
skipped with its own refusal as the reason; test_mla_family.py checks that what an adapter
declares it is also willing to serve, so a refusal cannot hide a declared case.

Tolerances in bf16 units: |out - ref| <= 2 ulp of |ref| (2/128 relative) + half an ulp of the
largest value |v|max / 256 (kernels round the softmax weights to bf16 before the value
product). LSE: within one bf16 ulp (2**-8) of the absolute scores, scale * max_j sum_i |q_i k_ij|,
plus 1e-5: a kernel may round q (or q * scale) and a dequantized FP8 key to bf16 once each
(half an ulp of every product term apiece), which moves each score, and so the LSE, by at most
that. (The H200 run showed FlashInfer 5e-3 nats off at 128 heads, inside this bound.)
"""

from __future__ import annotations

import math

import pytest
import torch

from ds_plugin.attention.mla_family import ADAPTERS, DecodeSpec, adapter_class
from ds_plugin.kernels.fp8_format import FP8
from ds_plugin.kernels.ref_mla import ref_mla_decode, ref_mla_kv_cache_write

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
REAL = [dict(rank=512, rope=64, heads=16), dict(rank=512, rope=64, heads=128)]
SMALL = dict(rank=64, rope=16, heads=8)
if CUDA:
    PAGES = [64, 1]
    SHAPES = [(name, dims) for name in ADAPTERS for dims in REAL]
else:
    # The interpreter is slow: Triton at small latents; the torch adapter at both.
    PAGES = [16, 1]
    SHAPES = [(name, SMALL) for name in ADAPTERS] + [("torch", REAL[0])]
DIMS = [SMALL] if not CUDA else REAL

CASES = [  # (seq_lens, s_q)
    ([0, 1, 2], 1),
    ([63, 64, 65, 1, 129], 1),   # page boundaries for 64-token pages (and 16, and 1)
    ([17, 5, 300], 1),           # ragged, a longer one that splits
    ([33, 5, 70], 2),            # MTP: causal among the new tokens
    ([2, 40, 19, 130], 3),       # s_q > seq_len for the first: its first row sees nothing
]
K_SCALE = 0.02
# One fixed Triton tile on the GPU keeps compiles few; tests/kernels covers the autotuned path.
TRITON_CONFIG = {"BLOCK_H": 16, "BLOCK_N": 32, "num_warps": 8} if CUDA else None


@pytest.fixture(autouse=True)
def _triton_on_cpu(monkeypatch):
    # On a CPU the Triton adapter runs under the interpreter that tests/conftest.py set up.
    if not CUDA:
        monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    monkeypatch.delenv("DS_PLUGIN_MLA_KERNEL", raising=False)


def poisoned_cache(seq_lens, page, rank, rope, kv, gen):
    """Shuffled pages holding each request's latents; every other row NaN (bf16) or 0x7f
    (e4m3's NaN), block-table entries past a request's pages out of range."""
    pages_per = [max(1, math.ceil(n / page)) for n in seq_lens]
    blocks = sum(pages_per) + 2
    order = torch.randperm(blocks, generator=gen)
    table = torch.full((len(seq_lens), max(pages_per) + 1), 10**6, dtype=torch.int32)
    dtype = FP8 if kv == "fp8" else torch.bfloat16
    cache = torch.full((blocks, page, rank + rope), float("nan")).to(dtype).to(DEVICE)
    k_scale = torch.tensor([K_SCALE], device=DEVICE) if kv == "fp8" else None
    used = 0
    for b, n in enumerate(seq_lens):
        table[b, :pages_per[b]] = order[used:used + pages_per[b]].int()
        used += pages_per[b]
        if n == 0:
            continue
        kv_c = torch.randn(n, rank, generator=gen).to(torch.bfloat16).to(DEVICE)
        k_pe = torch.randn(n, rope, generator=gen).to(torch.bfloat16).to(DEVICE)
        pos = torch.arange(n)
        slots = (table[b, pos // page].long() * page + pos % page).to(DEVICE)
        ref_mla_kv_cache_write(kv_c, k_pe, cache, slots, k_scale)
    return cache, table.to(DEVICE), k_scale


def abs_scores(q, cache, table, seq_lens, scale, k_scale):
    """scale * max over visible keys of sum_i |q_i k_i|, per query row: [B, s_q, H]."""
    absq = q.float().abs()
    k = cache.float() * (k_scale.float() if k_scale is not None else 1.0)
    flat = k.abs().view(-1, k.shape[-1])
    page = cache.shape[1]
    out = torch.zeros(q.shape[:3], device=q.device)
    for b, n in enumerate(seq_lens.tolist()):
        if n == 0:
            continue
        pos = torch.arange(n, device=q.device)
        rows = flat[table[b, pos // page].long() * page + pos % page]      # [n, D]
        out[b] = torch.einsum("thd,nd->thn", absq[b], rows).amax(-1) * scale
    return out


def check(out, lse, ref_out, ref_lse, vmax, lse_bound):
    assert not out.isnan().any(), "NaN in the output: a poisoned row was read"
    err = (out.float() - ref_out).abs()
    bound = 2 / 128 * ref_out.abs() + vmax / 256
    assert (err <= bound).all(), (f"max err {err.max().item():.4g}, worst excess "
                                  f"{(err - bound).max().item():.4g}")
    if lse is None:
        return
    assert not lse.isnan().any()
    assert torch.equal(lse.isneginf(), ref_lse.isneginf()), "rows that see no key differ"
    fin = ref_lse.isfinite()
    lse_err = (lse[fin] - ref_lse[fin]).abs()
    assert (lse_err <= lse_bound[fin]).all(), (f"lse max err {lse_err.max().item():.4g}, worst "
                                               f"excess {(lse_err - lse_bound[fin]).max().item():.4g}")


def build(name, dims, page, kv, s_q):
    cls = adapter_class(name)
    spec = DecodeSpec(num_heads=dims["heads"], scale=(dims["rank"] + dims["rope"]) ** -0.5,
                      page_size=page, kv_dtype=kv, device=DEVICE, kv_lora_rank=dims["rank"],
                      rope_dim=dims["rope"], max_query_len=s_q, max_seq_len=4096)
    reason = cls.refusal(spec)
    if reason:
        pytest.skip(f"{name}: {reason}")
    return cls(spec, config=TRITON_CONFIG) if name == "triton" else cls(spec)


@pytest.mark.parametrize("name,dims", SHAPES,
                         ids=[f"{n}-r{d['rank']}-h{d['heads']}" for n, d in SHAPES])
@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page{p}")
@pytest.mark.parametrize("kv", ["bf16", "fp8"])
@pytest.mark.parametrize("seq_lens,s_q", CASES, ids=lambda c: str(c))
def test_decode_matches_reference(name, dims, page, kv, seq_lens, s_q):
    adapter = build(name, dims, page, kv, s_q)
    gen = torch.Generator().manual_seed(sum(seq_lens) * 7 + s_q + page)
    cache, table, k_scale = poisoned_cache(seq_lens, page, dims["rank"], dims["rope"], kv, gen)
    q = torch.randn(len(seq_lens), s_q, dims["heads"], dims["rank"] + dims["rope"],
                    generator=gen).to(torch.bfloat16).to(DEVICE)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    scale = adapter.spec.scale
    # vLLM hands the FP8 cache over as uint8 storage.
    stored = cache.view(torch.uint8) if kv == "fp8" else cache
    plan = adapter.plan(table, seq, s_q, longest=max(seq_lens))
    out, lse = adapter.decode(q, stored, table, seq, plan=plan, k_scale=k_scale)
    assert out.shape == (len(seq_lens), s_q, dims["heads"], dims["rank"])
    assert out.dtype == q.dtype
    ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, scale, dims["rank"], k_scale)
    if lse is not None:
        assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    vmax = max((ref_out.abs().max().item(), 1e-6))
    lse_bound = abs_scores(q, cache, table, seq, scale, k_scale) * 2**-8 + 1e-5
    check(out, lse, ref_out, ref_lse, vmax, lse_bound)


@pytest.mark.parametrize("name", list(ADAPTERS))
@pytest.mark.parametrize("kv", ["bf16", "fp8"])
def test_cache_write_is_the_reference_write(name, kv):
    dims = DIMS[0]
    adapter = build(name, dims, PAGES[0], kv, 1)
    gen = torch.Generator().manual_seed(5)
    rank, rope, page = dims["rank"], dims["rope"], PAGES[0]
    tokens = 2 * page + 3
    kv_c = (4 * torch.randn(tokens, rank, generator=gen)).to(torch.bfloat16).to(DEVICE)
    k_pe = (4 * torch.randn(tokens, 1, rope, generator=gen)).to(torch.bfloat16).to(DEVICE)
    slots = torch.randperm(4 * page, generator=gen)[:tokens].to(DEVICE)
    slots[::5] = -1  # padding tokens write nothing
    dtype = FP8 if kv == "fp8" else torch.bfloat16
    k_scale = torch.tensor([K_SCALE], device=DEVICE) if kv == "fp8" else None
    ours = torch.full((4, page, rank + rope), float("nan")).to(dtype).to(DEVICE)
    want = ours.clone()
    adapter.write(kv_c, k_pe, ours.view(torch.uint8) if kv == "fp8" else ours, slots, k_scale)
    ref_mla_kv_cache_write(kv_c, k_pe, want, slots, k_scale)
    assert torch.equal(ours.view(torch.uint8), want.view(torch.uint8))
