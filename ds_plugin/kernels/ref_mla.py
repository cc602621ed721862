"""fp32 torch twins of the MLA kernels: the oracles the Triton kernels are tested against.

Shapes and names follow DeepSeek-V3's MLA. One latent per cached token: `kv_c` (kv_lora_rank,
512) and `k_pe` (rope, 64), stored side by side as a 576-wide row of a paged cache
`[num_blocks, block_size, 576]`. A block table maps a sequence's logical page i to a physical
block; `slot = block * block_size + offset` addresses one row.

Two forms of the same attention, which must agree with each other:
- naive (non-absorbed): decompress K/V per head from the latent with `kv_b_proj`, then ordinary
  attention (this is also what prefill runs);
- absorbed: fold W_UK into the query so all heads attend to the shared 576-wide latent, whose first
  kv_lora_rank values are also the value; W_UV is applied to the output afterwards (decode).

Causality for several new tokens per sequence (MTP verification): the cache already holds the
new tokens, so with `s_q` query tokens and `seq_len` cached tokens, query token t sees cached
positions `< seq_len - s_q + 1 + t`.
"""

from __future__ import annotations

import math

import torch

from ds_plugin.kernels.fp8_format import E4M3_MAX, FP8


def ref_mla_kv_cache_write(kv_c: torch.Tensor, k_pe: torch.Tensor, cache: torch.Tensor,
                           slot_mapping: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Write each token's latent into `cache` (in place) at `slot_mapping`; negative slots skip.

    An fp8 cache stores `clamp(x / scale, ±448)` rounded to e4m3 (round to nearest even).
    """
    rank = kv_c.shape[-1]
    flat = cache.view(-1, cache.shape[-1])
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    row = torch.cat([kv_c[keep].float(), k_pe.reshape(k_pe.shape[0], -1)[keep].float()], dim=-1)
    if cache.dtype == FP8:
        row = (row / scale.float()).clamp(-E4M3_MAX, E4M3_MAX)
    flat[slots] = row.to(cache.dtype)
    assert flat.shape[-1] == rank + k_pe.shape[-1]
    return cache


def ref_gather_latent(cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int,
                      k_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The first `seq_len` latent rows of one sequence, dequantised to fp32: [seq_len, 576]."""
    block_size = cache.shape[1]
    pos = torch.arange(seq_len, device=cache.device)
    pages = block_table_row[pos // block_size].long()
    rows = cache[pages, pos % block_size].float()
    if cache.dtype == FP8:
        rows = rows * k_scale.float()
    return rows


def ref_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  q_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense causal attention in fp32 for one sequence.

    q [s_q, H, dk], k [L, H or 1, dk], v [L, H or 1, dv]; query i sees keys `< q_offset + i + 1`.
    Returns out [s_q, H, dv] (0 where no key is visible) and natural-log lse [s_q, H] (-inf there).
    """
    q, k, v = q.float(), k.float(), v.float()
    scores = torch.einsum("shd,lhd->shl", q, k.expand(-1, q.shape[1], -1)) * scale
    visible = torch.arange(k.shape[0])[None, :] < (q_offset + 1 + torch.arange(q.shape[0]))[:, None]
    scores = scores.masked_fill(~visible.to(scores.device)[:, None, :], -math.inf)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.masked_fill(lse == -math.inf, 0.0)[..., None])
    out = torch.einsum("shl,lhd->shd", probs, v.expand(-1, q.shape[1], -1))
    return out, lse


def ref_mla_decode(q: torch.Tensor, cache: torch.Tensor, block_table: torch.Tensor,
                   seq_lens: torch.Tensor, scale: float, kv_lora_rank: int,
                   k_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode over a paged latent cache, in fp32.

    q [B, s_q, H, 576] (absorbed nope part, then rope part); returns out [B, s_q, H, kv_lora_rank]
    and lse [B, s_q, H] (natural log of the scaled scores' sum of exponentials).
    """
    batch, s_q, heads, _ = q.shape
    out = q.new_zeros(batch, s_q, heads, kv_lora_rank, dtype=torch.float32)
    lse = q.new_full((batch, s_q, heads), -math.inf, dtype=torch.float32)
    for b, seq_len in enumerate(seq_lens.tolist()):
        latent = ref_gather_latent(cache, block_table[b], seq_len, k_scale)[:, None, :]
        out[b], lse[b] = ref_attention(q[b], latent, latent[..., :kv_lora_rank], scale,
                                       q_offset=seq_len - s_q)
    return out, lse


def split_kv_b_proj(kv_b_weight: torch.Tensor, heads: int, nope: int, v_dim: int):
    """W_UK [H, nope, rank] and W_UV [H, v_dim, rank] from kv_b_proj's weight [H*(nope+v), rank]."""
    w = kv_b_weight.float().view(heads, nope + v_dim, -1)
    return w[:, :nope], w[:, nope:]


def absorb_query(q_nope: torch.Tensor, q_pe: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """[..., H, nope] and [..., H, rope] -> the absorbed 576-wide query [..., H, rank + rope]."""
    return torch.cat([torch.einsum("...hn,hnr->...hr", q_nope.float(), w_uk), q_pe.float()], dim=-1)


def unabsorb_output(o_latent: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """Latent attention output [..., H, rank] -> per-head values [..., H, v_dim]."""
    return torch.einsum("...hr,hvr->...hv", o_latent.float(), w_uv)


def ref_mla_naive(q_nope: torch.Tensor, q_pe: torch.Tensor, kv_c: torch.Tensor, k_pe: torch.Tensor,
                  kv_b_weight: torch.Tensor, scale: float, q_offset: int) -> torch.Tensor:
    """Non-absorbed MLA for one sequence: decompress K/V per head, then dense causal attention.

    q_nope [s_q, H, nope], q_pe [s_q, H, rope], kv_c [L, rank], k_pe [L, rope];
    returns [s_q, H, v_dim] in fp32.
    """
    heads, nope = q_nope.shape[1], q_nope.shape[2]
    v_dim = kv_b_weight.shape[0] // heads - nope
    w_uk, w_uv = split_kv_b_proj(kv_b_weight, heads, nope, v_dim)
    k_nope = torch.einsum("lr,hnr->lhn", kv_c.float(), w_uk)
    v = torch.einsum("lr,hvr->lhv", kv_c.float(), w_uv)
    k = torch.cat([k_nope, k_pe.float()[:, None, :].expand(-1, heads, -1)], dim=-1)
    q = torch.cat([q_nope.float(), q_pe.float()], dim=-1)
    return ref_attention(q, k, v, scale, q_offset)[0]
