"""Paged MLA latent-cache write: `kv_c` and `k_pe` of each new token into its cache slot.

Cache layout `[num_blocks, block_size, kv_lora_rank + rope]` (576 for DeepSeek-V3), one row per
token, kv_c first. `slot_mapping[t] = block * block_size + offset`; a negative slot marks a padding
token (CUDA-graph padding, vLLM uses -1) and writes nothing.

BF16 cache: a plain copy (bitwise). FP8 e4m3 cache (torch.float8_e4m3fn, or vLLM's uint8 storage
of it): `clamp(x / scale, ±448)` rounded to nearest even (fp8_format.round_e4m3), with one
per-tensor fp32 `scale`; the division is IEEE-rounded so the result is bitwise equal to the
torch twin `ref_mla.ref_mla_kv_cache_write`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8, round_e4m3

_MAX = tl.constexpr(E4M3_MAX)


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
        if FP8:
            scale = tl.load(SCALE)
            c = round_e4m3(tl.clamp(tl.div_rn(c.to(tl.float32), scale), -_MAX, _MAX))
            r = round_e4m3(tl.clamp(tl.div_rn(r.to(tl.float32), scale), -_MAX, _MAX))
        tl.store(dst + offs_c, c.to(CACHE.dtype.element_ty))
        tl.store(dst + RANK + offs_r, r.to(CACHE.dtype.element_ty))


def as_fp8_cache(cache: torch.Tensor) -> torch.Tensor:
    """vLLM stores an fp8 cache as uint8; view it as e4m3 (a no-op for bf16 and e4m3 caches)."""
    return cache.view(FP8) if cache.dtype == torch.uint8 else cache


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
    fp8 = cache.dtype == FP8
    if fp8 and (scale is None or scale.numel() != 1 or scale.dtype != torch.float32):
        raise ValueError("an fp8 cache needs `scale`: an fp32 tensor of one element")
    if num_tokens == 0:
        return
    _mla_kv_cache_write_kernel[(num_tokens,)](
        kv_c, k_pe, cache, slot_mapping, scale if fp8 else kv_c,
        kv_c.stride(0), k_pe.stride(0), cache.stride(0), cache.stride(1),
        RANK=rank, ROPE=rope, PAGE=cache.shape[1], FP8=fp8, num_warps=4)
