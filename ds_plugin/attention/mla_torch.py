"""The torch adapter: MLA decode and the latent-cache write in plain torch, fp32 math (CPUs).

The CPU engine's path (vLLM's CPU build has no Triton GPU and no kernel library). Batched:
each request's pages are gathered through its block table into one [B, L, 576] latent tensor,
rows past a request's length are zeroed (unused pages may hold anything, NaN included), and
the causal mask, softmax and value product run in fp32. The output is rounded to q's dtype
once, at the end. Host syncs (the batch's longest length) are fine on a CPU.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from ds_plugin.attention.mla_family import Capabilities, MLADecodeAdapter
from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8


def write_latents(kv_c: torch.Tensor, k_pe: torch.Tensor, cache: torch.Tensor,
                  slots: torch.Tensor, k_scale: torch.Tensor | None) -> None:
    """kv_c [T, rank] and k_pe [T, rope] (or [T, 1, rope]) into `cache` rows; slot < 0 skips.

    An FP8 cache (e4m3, or uint8 storage of it) stores clamp(x / k_scale, +-448) rounded to
    nearest even, as the Triton write does.
    """
    flat = cache.view(FP8) if cache.dtype == torch.uint8 else cache
    flat = flat.view(-1, flat.shape[-1])
    keep = slots >= 0
    rows = torch.cat([kv_c[keep], k_pe.reshape(k_pe.shape[0], k_pe.shape[-1])[keep]], dim=-1)
    if flat.dtype == FP8:
        rows = (rows.float() / k_scale.float()).clamp(-E4M3_MAX, E4M3_MAX)
    flat[slots[keep].long()] = rows.to(flat.dtype)


def decode_latents(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
                   seq_lens: torch.Tensor, scale: float, kv_lora_rank: int,
                   k_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode over the paged cache: out [B, s_q, H, rank] (q's dtype), lse fp32."""
    cache = cache.view(FP8) if cache.dtype == torch.uint8 else cache
    batch, s_q, heads, _ = q.shape
    page = cache.shape[1]
    longest = int(seq_lens.max()) if batch else 0
    if longest == 0:
        return (q.new_zeros(batch, s_q, heads, kv_lora_rank),
                torch.full((batch, s_q, heads), -math.inf, device=q.device))
    pos = torch.arange(longest, device=q.device)
    valid = pos[None, :] < seq_lens[:, None].long()                          # [B, L]
    # Entries past a request's pages are never followed: point them at block 0, then zero.
    logical = (pos // page)[None, :].expand(batch, -1)
    logical = logical.clamp(max=block_table.shape[1] - 1)
    blocks = torch.where(valid, block_table.long().gather(1, logical), 0)
    latent = cache[blocks, (pos % page)[None, :].expand(batch, -1)].float()  # [B, L, D]
    if cache.dtype == FP8:
        latent = latent * k_scale.float()
    latent = torch.where(valid[..., None], latent, 0.0)
    scores = torch.einsum("bthd,bld->bthl", q.float(), latent) * scale
    # Query token t sees positions < seq_len - s_q + 1 + t.
    limit = seq_lens.long()[:, None] - s_q + 1 + torch.arange(s_q, device=q.device)[None, :]
    visible = pos[None, None, :] < limit[..., None]                          # [B, s_q, L]
    scores = scores.masked_fill(~visible[:, :, None, :], -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(lse == -math.inf, 0.0, lse)[..., None])
    out = torch.einsum("bthl,blr->bthr", probs, latent[..., :kv_lora_rank])
    return out.to(q.dtype), lse


class TorchDecode(MLADecodeAdapter):
    name = "torch"
    caps: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cpu"}), library=None, pin="torch",
        kv_dtypes=frozenset({"bf16", "fp16", "fp32", "fp8"}),
        q_dtypes=frozenset({torch.bfloat16, torch.float16, torch.float32}),
        pages="any", page_ok=lambda page: page >= 1, max_query_len=None,
        cuda_graphs=False, rank_rope=None)

    def write(self, kv_c, k_pe, cache, slots, k_scale):
        write_latents(kv_c, k_pe, cache, slots, k_scale)

    def decode(self, q, cache, block_table, seq_lens, *, plan=None, k_scale=None):
        return decode_latents(q, cache, block_table, seq_lens, self.spec.scale,
                              self.spec.kv_lora_rank, k_scale)
