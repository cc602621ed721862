"""DeepSeek-V3 with its MTP layer in plain fp32 torch, for training tiny checkpoints.

The math is the served model's, restated for training (ds_plugin.model and vLLM's MTP draft
serve what this trains; tests/spec/test_trained_checkpoint.py checks this restatement against
transformers' DeepseekV3 on the written checkpoint):

    main:  DeepSeek-V3 (MLA, dense first layer, DeepSeekMoE after), plain RoPE on
           interleaved pairs, sigmoid router with grouped top-k, weights renormalised and
           scaled by routed_scaling_factor; final hidden H = norm(h_L).
    MTP:   y_d[p] = Block(eh_proj(enorm(E x_{p+1}) ‖ hnorm(g_d[p])))  predicts x_{p+2}
           g_0[p] = H[p] (the target's hidden state);  g_d[p] = shared_head.norm(y_{d-1}[p-1])

Depth d > 0 is what vLLM's proposer runs for draft step d with the one MTP layer: the query at
position p sees the MTP keys of depth 0 up to position p - d (written by the proposer's first
pass over verified tokens) and the key of each later depth e at position p - d + e (one per
draft step). Training all depths in parallel with exactly that visibility teaches the layer
to draft k tokens, not only one. Embeddings of position 0 enter the MTP layer as zeros, as
vLLM feeds them.

The vocabulary is the real tokenizer's, trained over a subset: `rows` maps the token ids the
corpus uses to rows of a small table. One extra embedding row ("unseen") stands for every other
id; one extra head row stands for all the other ids at once, its logit raised by
log(#other ids) so the softmax equals the full vocabulary's with those rows tied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ds_plugin.testing.checkpoint import TinyConfig


class Norm(nn.Module):
    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _linear(n_in: int, n_out: int, std: float) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, bias=False)
    nn.init.normal_(lin.weight, std=std)
    return lin


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d). x: [B, T, ..., d]."""
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[..., None].float() * freq                              # [B, T, d/2]
    while ang.dim() < x.dim():
        ang = ang.unsqueeze(-2)
    cos, sin = ang.cos(), ang.sin()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)


class MLA(nn.Module):
    def __init__(self, c: TinyConfig, std: float) -> None:
        super().__init__()
        self.c = c
        h, heads = c.hidden_size, c.num_attention_heads
        self.qk = c.qk_nope_head_dim + c.qk_rope_head_dim
        self.q_a_proj = _linear(h, c.q_lora_rank, std)
        self.q_a_layernorm = Norm(c.q_lora_rank, c.rms_norm_eps)
        self.q_b_proj = _linear(c.q_lora_rank, heads * self.qk, std)
        self.kv_a_proj_with_mqa = _linear(h, c.kv_lora_rank + c.qk_rope_head_dim, std)
        self.kv_a_layernorm = Norm(c.kv_lora_rank, c.rms_norm_eps)
        self.kv_b_proj = _linear(c.kv_lora_rank,
                                 heads * (c.qk_nope_head_dim + c.v_head_dim), std)
        self.o_proj = _linear(heads * c.v_head_dim, h, std / math.sqrt(2 * c.num_hidden_layers))

    def qkv(self, x: torch.Tensor, pos: torch.Tensor):
        c, (b, t, _) = self.c, x.shape
        nope, r = c.qk_nope_head_dim, c.qk_rope_head_dim
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(b, t, -1, self.qk)
        kv_c, k_pe = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, r], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(kv_c)).view(b, t, -1, nope + c.v_head_dim)
        k_nope, v = kv.split([nope, c.v_head_dim], dim=-1)
        q = torch.cat([q[..., :nope], rope(q[..., nope:], pos, c.rope_theta)], dim=-1)
        k_pe = rope(k_pe, pos, c.rope_theta)[:, :, None].expand(-1, -1, k_nope.shape[2], -1)
        return q, torch.cat([k_nope, k_pe], dim=-1), v

    def forward(self, x: torch.Tensor, pos: torch.Tensor, memory: list | None = None):
        """Causal attention; with `memory` (the keys/values of depths 0..d-1 of the MTP
        layer), depth d = len(memory) attends as the proposer's draft step d does."""
        q, k, v = self.qkv(x, pos)
        t, d = x.shape[1], len(memory or [])
        kv = (memory or []) + [(k, v)]
        k0, v0 = kv[0]
        s0 = torch.einsum("bthe,bshe->bhts", q, k0) / math.sqrt(self.qk)
        ar = torch.arange(t)
        # Rows p < d have no valid chain; they keep key 0 so the softmax stays finite.
        allowed = (ar[None, :] <= (ar[:, None] - d).clamp(min=0))
        s0 = s0.masked_fill(~allowed, float("-inf"))
        # Depth e's key at position p - d + e, lined up with the query at p.
        shift = lambda x, n: F.pad(x, (0, 0, 0, 0, n, 0))[:, :t]  # noqa: E731
        shifted = [(shift(ke, d - e), shift(ve, d - e)) for e, (ke, ve) in enumerate(kv) if e]
        diag = [torch.einsum("bthe,bthe->bht", q, ke)[..., None] / math.sqrt(self.qk)
                for ke, _ in shifted]
        p = torch.cat([s0, *diag], dim=-1).softmax(-1)
        out = torch.einsum("bhts,bshe->bthe", p[..., :t], v0)
        for i, (_, ve) in enumerate(shifted):
            out = out + p[..., t + i].transpose(1, 2)[..., None] * ve
        return self.o_proj(out.flatten(2)), (k, v)


class Dense(nn.Module):
    def __init__(self, h: int, inter: int, std: float) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = _linear(h, inter, std), _linear(h, inter, std)
        self.down_proj = _linear(inter, h, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, c: TinyConfig, std: float) -> None:
        super().__init__()
        self.c = c
        e, h, i = c.n_routed_experts, c.hidden_size, c.moe_intermediate_size
        self.gate = _linear(h, e, std)
        # Selection-only bias, steered towards balanced load (DeepSeek-V3 §2.1.2), not learnt.
        self.register_buffer("e_score_correction_bias", torch.zeros(e))
        self.w_gate = nn.Parameter(torch.randn(e, i, h) * std)
        self.w_up = nn.Parameter(torch.randn(e, i, h) * std)
        self.w_down = nn.Parameter(torch.randn(e, h, i) * std)
        self.shared_experts = Dense(h, i * c.n_shared_experts, std)
        self.load = torch.zeros(e)

    def balance(self, rate: float) -> None:
        """Nudge the selection bias of over-loaded experts down and under-loaded ones up."""
        self.e_score_correction_bias += rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's chosen experts [N, k] and their combine weights [N, k]."""
        c = self.c
        s = torch.sigmoid(self.gate(x))
        biased = (s + self.e_score_correction_bias).detach()
        groups = biased.view(-1, c.n_group, c.n_routed_experts // c.n_group)
        group_score = groups.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_score).scatter_(
            1, group_score.topk(c.topk_group, dim=-1).indices, 1.0)
        keep = keep.repeat_interleave(c.n_routed_experts // c.n_group, dim=1).bool()
        chosen = biased.masked_fill(~keep, float("-inf")).topk(c.num_experts_per_tok, -1).indices
        w = s.gather(1, chosen)
        if c.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        if self.training:
            self.load.index_add_(0, chosen.flatten(), torch.ones(chosen.numel()))
        return chosen, w * c.routed_scaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        chosen, weight = self.route(flat)
        out = self.shared_experts(flat)
        for e in range(self.c.n_routed_experts):
            tok, slot = (chosen == e).nonzero(as_tuple=True)
            if tok.numel():
                h = flat[tok]
                y = (F.silu(h @ self.w_gate[e].T) * (h @ self.w_up[e].T)) @ self.w_down[e].T
                out = out.index_add(0, tok, y * weight[tok, slot, None])
        return out.view_as(x)


class Block(nn.Module):
    def __init__(self, c: TinyConfig, index: int, std: float) -> None:
        super().__init__()
        self.input_layernorm = Norm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = MLA(c, std)
        self.post_attention_layernorm = Norm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MoE(c, std) if c.is_moe_layer(index) else Dense(
            c.hidden_size, c.intermediate_size, std)

    def forward(self, x, pos, memory=None):
        a, kv = self.self_attn(self.input_layernorm(x), pos, memory)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class MTPLayer(nn.Module):
    def __init__(self, c: TinyConfig, std: float) -> None:
        super().__init__()
        h = c.hidden_size
        self.enorm, self.hnorm = Norm(h, c.rms_norm_eps), Norm(h, c.rms_norm_eps)
        self.eh_proj = _linear(2 * h, h, std)
        self.shared_head_norm = Norm(h, c.rms_norm_eps)
        self.block = Block(c, c.num_hidden_layers, std)


class TinyDeepSeek(nn.Module):
    def __init__(self, c: TinyConfig, rows: int, other_ids: int) -> None:
        super().__init__()
        if c.rope_scaling is not None or c.q_lora_rank is None:
            raise ValueError("tiny_lm trains plain-RoPE, q-LoRA configs only")
        self.c = c
        std = c.init_std
        self.embed = nn.Parameter(torch.randn(rows + 1, c.hidden_size))   # + "unseen" row
        self.layers = nn.ModuleList(Block(c, i, std) for i in range(c.num_hidden_layers))
        self.norm = Norm(c.hidden_size, c.rms_norm_eps)
        self.head = nn.Parameter(torch.randn(rows + 1, c.hidden_size) * std)  # + "other" row
        self.mtp = MTPLayer(c, std)
        self.log_other = math.log(max(other_ids, 1))

    def logits(self, h: torch.Tensor, norm: Norm) -> torch.Tensor:
        z = norm(h) @ self.head.T
        return torch.cat([z[..., :-1], z[..., -1:] + self.log_other], dim=-1)

    def forward(self, ids: torch.Tensor, depths: int):
        """ids: [B, T] table rows. Returns main logits and the logits of MTP depths
        0..depths-1, each [B, T, rows + 1] (row p of depth d predicts ids[p + 2])."""
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        x = self.embed[ids]
        for layer in self.layers:
            x, _ = layer(x, pos)
        hidden = self.norm(x)
        main = hidden @ self.head.T
        main = torch.cat([main[..., :-1], main[..., -1:] + self.log_other], dim=-1)
        m = self.mtp
        # Input token of row p is ids[p + 1]; the last row has none (zeros, never scored).
        nxt = F.pad(self.embed[ids[:, 1:]], (0, 0, 0, 1))
        nxt = torch.where(pos[..., None] == 0, 0.0, nxt)
        feed, memory, out = hidden, [], []
        for d in range(depths):
            y = m.eh_proj(torch.cat([m.enorm(nxt), m.hnorm(feed)], dim=-1))
            y, kv = m.block(y, pos, memory)
            memory.append(kv)
            out.append(self.logits(y, m.shared_head_norm))
            feed = F.pad(m.shared_head_norm(y), (0, 0, 1, 0))[:, :-1]   # row p gets p - 1
        return main, out
