"""Paged MLA latent-cache write: `kv_c` and `k_pe` of each new token into its cache slot.

Cache layout `[num_blocks, block_size, kv_lora_rank + rope]` (576 for DeepSeek-V3), one row per
token, kv_c first. `slot_mapping[t] = block * block_size + offset`; a negative slot marks a padding
token (CUDA-graph padding, vLLM uses -1) and writes nothing.

BF16 cache: a plain copy (bitwise). FP8 e4m3 cache (torch.float8_e4m3fn, or vLLM's uint8 storage
of it): `clamp(x / scale, ±448)` rounded to nearest even, with one per-tensor fp32 `scale`; the
division is IEEE-rounded so the result is bitwise equal to the torch twin
`ref_mla.ref_mla_kv_cache_write`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_E4M3_MAX = 448.0


@triton.jit
def _e4m3_bits(x):
    """fp32 in [-448, 448] -> e4m3fn bit pattern (uint8), round to nearest even.

    Done with integer arithmetic rather than a float8 cast: the Triton 3.9 interpreter's cast
    rounds wrongly (seen: 7.9 -> 4.0), and one code path on both GPU and interpreter lets the CPU
    tests prove the bits the GPU writes.
    """
    bits = x.to(tl.int32, bitcast=True)
    sign = ((bits >> 24) & 0x80).to(tl.int32)
    mag = bits & 0x7FFFFFFF
    # Normal range (|x| >= 2^-6): rebias the exponent 127 -> 7, keep 3 of 23 mantissa bits.
    # A carry out of the mantissa correctly bumps the exponent; the clamp keeps it <= 448.
    rebased = mag - ((127 - 7) << 23)
    keep = rebased >> 20
    rem = rebased & 0xFFFFF
    up = (rem > 0x80000) | ((rem == 0x80000) & ((keep & 1) == 1))
    normal = keep + up.to(tl.int32)
    # Subnormals are multiples of 2^-9: scale exactly, round half to even (8 encodes 2^-6).
    f = tl.abs(x) * 512.0
    n = tl.floor(f)
    r = f - n
    odd = (n.to(tl.int32) & 1) == 1
    sub = n.to(tl.int32) + ((r > 0.5) | ((r == 0.5) & odd)).to(tl.int32)
    code = tl.where(mag >= (121 << 23), normal, sub)
    return (sign | code).to(tl.uint8)


@triton.jit
def _mla_kv_cache_write_kernel(KVC, KPE, CACHE, SLOT, SCALE,
                               stride_kvc, stride_kpe, stride_blk, stride_tok,
                               RANK: tl.constexpr, ROPE: tl.constexpr, PAGE: tl.constexpr,
                               FP8: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(SLOT + t).to(tl.int64)
    if slot >= 0:
        dst = CACHE + (slot // PAGE) * stride_blk + (slot % PAGE) * stride_tok
        offs_c = tl.arange(0, RANK)
        offs_r = tl.arange(0, ROPE)
        c = tl.load(KVC + t.to(tl.int64) * stride_kvc + offs_c)
        r = tl.load(KPE + t.to(tl.int64) * stride_kpe + offs_r)
        if FP8:  # CACHE is the uint8 view of the e4m3 cache
            scale = tl.load(SCALE)
            c = _e4m3_bits(tl.clamp(tl.div_rn(c.to(tl.float32), scale), -448.0, 448.0))
            r = _e4m3_bits(tl.clamp(tl.div_rn(r.to(tl.float32), scale), -448.0, 448.0))
        tl.store(dst + offs_c, c.to(CACHE.dtype.element_ty))
        tl.store(dst + RANK + offs_r, r.to(CACHE.dtype.element_ty))


def as_fp8_cache(cache: torch.Tensor) -> torch.Tensor:
    """vLLM stores an fp8 cache as uint8; view it as e4m3 (a no-op for bf16 and e4m3 caches)."""
    return cache.view(torch.float8_e4m3fn) if cache.dtype == torch.uint8 else cache


def mla_kv_cache_write(kv_c: torch.Tensor, k_pe: torch.Tensor, cache: torch.Tensor,
                       slot_mapping: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """Write latents into the paged cache in place.

    kv_c [T, rank] and k_pe [T, rope] or [T, 1, rope] (bf16/fp16, last dim contiguous);
    cache [num_blocks, block_size, rank + rope] bf16/fp16, float8_e4m3fn or uint8 (fp8 storage);
    slot_mapping [T] int32/int64; scale: fp32 tensor of one element, needed for an fp8 cache.
    """
    k_pe = k_pe.reshape(k_pe.shape[0], -1) if k_pe.dim() == 3 else k_pe
    cache = as_fp8_cache(cache)
    num_tokens, rank = kv_c.shape
    rope = k_pe.shape[-1]
    if cache.dim() != 3 or cache.shape[-1] != rank + rope:
        raise ValueError(f"cache: expected [blocks, block_size, {rank + rope}], got {tuple(cache.shape)}")
    if k_pe.shape[0] != num_tokens or slot_mapping.shape != (num_tokens,):
        raise ValueError(f"kv_c {tuple(kv_c.shape)}, k_pe {tuple(k_pe.shape)} and slot_mapping "
                         f"{tuple(slot_mapping.shape)} disagree on the token count")
    if kv_c.stride(-1) != 1 or k_pe.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError("kv_c, k_pe and cache need a contiguous last dimension")
    if cache.stride(1) != cache.shape[-1]:
        raise ValueError("cache rows must be packed: stride(1) == rank + rope")
    fp8 = cache.dtype == torch.float8_e4m3fn
    if fp8 and (scale is None or scale.numel() != 1 or scale.dtype != torch.float32):
        raise ValueError("an fp8 cache needs `scale`: an fp32 tensor of one element")
    if num_tokens == 0:
        return
    _mla_kv_cache_write_kernel[(num_tokens,)](
        kv_c, k_pe, cache.view(torch.uint8) if fp8 else cache, slot_mapping, scale if fp8 else kv_c,
        kv_c.stride(0), k_pe.stride(0), cache.stride(0), cache.stride(1),
        RANK=rank, ROPE=rope, PAGE=cache.shape[1], FP8=fp8, num_warps=4)
