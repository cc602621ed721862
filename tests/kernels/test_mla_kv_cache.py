"""Paged latent-cache write: bitwise against the torch twin, bf16 and fp8, padding slots skipped.

Runs compiled on CUDA, else under the Triton interpreter (set up for CPU runs by
tests/conftest.py).
"""

import pytest
import torch

from ds_plugin.kernels.mla_kv_cache import mla_kv_cache_write
from ds_plugin.kernels.ref_mla import ref_mla_kv_cache_write

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16)


def _case(num_tokens, rank, rope, page, blocks, cache_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    kv_c = (torch.randn(num_tokens, rank, generator=gen) * 3).to(torch.bfloat16)
    k_pe = (torch.randn(num_tokens, 1, rope, generator=gen) * 3).to(torch.bfloat16)
    slots = torch.randperm(blocks * page, generator=gen)[:num_tokens]
    slots[::3] = -1  # padding tokens write nothing
    cache = torch.full((blocks, page, rank + rope), float("nan")).to(cache_dtype)
    return [x.to(DEVICE) for x in (kv_c, k_pe, slots, cache)]


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("rank,rope,page", [(64, 16, 16), (512, 64, 64)])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_write_matches_twin_bitwise(cache_dtype, rank, rope, page, slot_dtype):
    kv_c, k_pe, slots, cache = _case(13, rank, rope, page, 3, cache_dtype, seed=rank + page)
    slots = slots.to(slot_dtype)
    # Large values exercise fp8 saturation at ±448 and the scale division.
    kv_c[0, :4] = torch.tensor([1e4, -1e4, 0.0, -0.0], dtype=torch.bfloat16)
    scale = torch.tensor([0.37], dtype=torch.float32, device=DEVICE)
    ours, ref = cache.clone(), cache.clone()
    mla_kv_cache_write(kv_c, k_pe, ours, slots, scale)
    ref_mla_kv_cache_write(kv_c, k_pe, ref, slots, scale)
    assert torch.equal(_bits(ours), _bits(ref))
    # Untouched slots keep their NaN poison: the padding tokens wrote nothing.
    written = torch.zeros(cache[..., 0].numel(), dtype=torch.bool, device=DEVICE)
    written[slots[slots >= 0].long()] = True
    assert ours.view(-1, rank + rope)[~written].float().isnan().all()


def test_bf16_round_trip_is_exact():
    kv_c, k_pe, slots, cache = _case(9, 64, 16, 16, 2, torch.bfloat16, seed=1)
    mla_kv_cache_write(kv_c, k_pe, cache, slots)
    keep = slots >= 0
    rows = cache.view(-1, 80)[slots[keep].long()]
    assert torch.equal(_bits(rows[:, :64]), _bits(kv_c[keep]))
    assert torch.equal(_bits(rows[:, 64:]), _bits(k_pe[keep, 0]))


def test_uint8_storage_is_fp8():
    kv_c, k_pe, slots, cache = _case(5, 64, 16, 16, 1, torch.float8_e4m3fn, seed=2)
    scale = torch.tensor([0.5], device=DEVICE)
    as_u8 = cache.clone().view(torch.uint8)
    ref = cache.clone()
    mla_kv_cache_write(kv_c, k_pe, as_u8, slots, scale)
    ref_mla_kv_cache_write(kv_c, k_pe, ref, slots, scale)
    assert torch.equal(as_u8, ref.view(torch.uint8))


def test_bad_input_names_the_culprit():
    kv_c, k_pe, slots, cache = _case(4, 64, 16, 16, 1, torch.float8_e4m3fn, seed=3)
    with pytest.raises(ValueError, match="scale"):
        mla_kv_cache_write(kv_c, k_pe, cache, slots)
    with pytest.raises(ValueError, match="cache"):
        mla_kv_cache_write(kv_c, k_pe, cache[..., :70], slots, torch.tensor([1.0], device=DEVICE))
    with pytest.raises(ValueError, match="slot_mapping"):
        mla_kv_cache_write(kv_c, k_pe, cache, slots[:2], torch.tensor([1.0], device=DEVICE))


def test_fp8_rounding_every_bf16_value():
    # Every finite bf16 with |x| <= 512 (ties, subnormals, saturation) through the kernel's own
    # e4m3 rounding, against torch's cast: 512 values per token row.
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[every.float().abs() <= 512]
    every = torch.cat([every, every.new_zeros((-every.numel()) % 512)]).view(-1, 512)
    tokens = every.shape[0]
    k_pe = torch.zeros(tokens, 64, dtype=torch.bfloat16)
    cache = torch.zeros(tokens, 1, 576, dtype=torch.float8_e4m3fn)
    ours, ref = cache.to(DEVICE), cache.clone().to(DEVICE)
    args = (every.to(DEVICE), k_pe.to(DEVICE))
    slots = torch.arange(tokens, device=DEVICE)
    one = torch.ones(1, device=DEVICE)
    mla_kv_cache_write(*args, ours, slots, one)
    ref_mla_kv_cache_write(*args, ref, slots, one)
    assert torch.equal(_bits(ours), _bits(ref))
