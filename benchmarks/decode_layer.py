"""One DeepSeek-V3 decoder layer at one rank's real sizes, built from the plugin's kernels as the
served model calls them, and the same layer in plain PyTorch and in the best peer composition.

Used by bench_decode_step.py (timing) and its CPU smoke test; vLLM-free (the H200 has no vLLM).

A layer is a list of named parts; each part is a function of a `State` (weights, caches, the
hidden state it updates), so a part can be timed alone and the whole layer as their sequence:

    attn_in    RMSNorm, fused q_a+kv_a (block-FP8), q_a/kv_a norms, q_b, RoPE, latent-cache
               write, W_UK absorption (bf16 bmm)
    attn       MLA decode over the paged latent cache (the family adapter the backend picks)
    attn_out   W_UV (bf16 bmm), o_proj (block-FP8), residual
    router     RMSNorm, bf16 gate GEMM, sigmoid + bias, grouped top-k
    experts    the routed experts (fused block-FP8 MoE)
    shared     the shared expert (block-FP8 gate_up, SiLU*mul, down), residual

Block-FP8 linears run `ds_plugin.kernels.fp8_linear.fp8_linear`, ds_fp8's CUDA dispatch (our
Triton GEMM or torch's blockwise scaled_mm by shape); experts run `fp8_fused_moe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ds_plugin.attention.mla_family import DecodeSpec, adapter_class
from ds_plugin.kernels.fp8_format import quant_block
from ds_plugin.kernels.fp8_linear import blockwise_scaled_mm, fp8_linear
from ds_plugin.kernels.fp8_moe import fp8_fused_moe
from ds_plugin.kernels.fp8_quant import fp8_act_quant



@dataclass(frozen=True)
class Dims:
    """Model sizes; the defaults are DeepSeek-V3's (config.json of the release)."""

    hidden: int = 7168
    q_lora: int = 1536
    experts: int = 256
    top_k: int = 8
    n_group: int = 8
    topk_group: int = 4
    moe_inter: int = 2048
    heads: int = 128
    vocab: int = 129280
    layers: int = 61
    dense_layers: int = 3
    dense_inter: int = 18432


DSV3 = Dims()
# The MLA latent is the same in every size the adapters serve.
KV_LORA, ROPE, NOPE, V_DIM, SCALING = 512, 64, 128, 128, 2.5
SOFTMAX_SCALE = 0.1352337788608801  # (192 ** -0.5) * yarn mscale(40, 1.0) ** 2


@dataclass(frozen=True)
class Layout:
    """What one of 8 ranks holds: TP8 splits heads, dense/shared projections and each expert's
    I eight ways (vLLM's `-tp 8` without expert parallelism); DP-attention + EP8 keeps every
    head (attention data-parallel over the batch) and gives each rank 1/8 of the experts whole."""

    name: str
    ep: bool
    dims: Dims = DSV3
    ranks: int = 8

    @property
    def heads(self) -> int:
        return self.dims.heads if self.ep else self.dims.heads // self.ranks

    @property
    def experts(self) -> int:
        return self.dims.experts // self.ranks if self.ep else self.dims.experts

    @property
    def expert_inter(self) -> int:
        return self.dims.moe_inter if self.ep else self.dims.moe_inter // self.ranks

    @property
    def shared_inter(self) -> int:
        return self.expert_inter

    @property
    def what(self) -> str:
        if self.ep:
            return (f"{self.heads} heads (attention data-parallel), {self.experts} of "
                    f"{self.dims.experts} experts whole (EP{self.ranks})")
        return (f"{self.heads} heads, 1/{self.ranks} of every dense and shared projection, all "
                f"{self.experts} experts with 1/{self.ranks} of I each (TP-sharded experts)")


TP8 = Layout("TP8", ep=False)
DPEP8 = Layout("DP-attn+EP8", ep=True)


def _fp8(n: int, k: int, device, g) -> tuple[torch.Tensor, torch.Tensor]:
    return quant_block(torch.randn(n, k, device=device, generator=g) / k ** 0.5)


@dataclass
class State:
    """Weights of one layer (block-FP8 as released, plus bf16 copies for the peers), the
    paged latent cache and the per-step inputs; `h` is the hidden state the parts update."""

    layout: Layout
    batch: int
    context: int
    kv: str                          # "bf16" or "fp8"
    w: dict = field(default_factory=dict)
    t: dict = field(default_factory=dict)


def build(layout: Layout, batch: int, context: int, kv: str, device, page: int = 64,
          seed: int = 0, cache_std: float = 1.0) -> State:
    g = torch.Generator(device=device).manual_seed(seed)
    st = State(layout, batch, context, kv)
    d, heads, w = layout.dims, layout.heads, st.w
    for name, (n, k) in {"qkv_a": (d.q_lora + KV_LORA + ROPE, d.hidden),
                         "q_b": (heads * (NOPE + ROPE), d.q_lora),
                         "o": (d.hidden, heads * V_DIM),
                         "sh_gu": (2 * layout.shared_inter, d.hidden),
                         "sh_d": (d.hidden, layout.shared_inter)}.items():
        w[name] = _fp8(n, k, device, g)
    e, i = layout.experts, layout.expert_inter
    w["w13"] = quant_block(torch.randn(e, 2 * i, d.hidden, device=device, generator=g) / d.hidden ** 0.5)
    w["w2"] = quant_block(torch.randn(e, d.hidden, i, device=device, generator=g) / i ** 0.5)
    bf = torch.bfloat16
    w["uk_t"] = (torch.randn(heads, NOPE, KV_LORA, device=device, generator=g) / NOPE ** 0.5).to(bf)
    w["uv"] = (torch.randn(heads, KV_LORA, V_DIM, device=device, generator=g) / KV_LORA ** 0.5).to(bf)
    # A router with some spread: DeepSeek's bias keeps the load near even in aggregate, and
    # one batch still hits experts unevenly.
    w["gate"] = (torch.randn(d.experts, d.hidden, device=device, generator=g) / d.hidden ** 0.5).to(bf)
    w["bias"] = torch.randn(d.experts, device=device, generator=g) * 0.01
    for norm in ("in_norm", "post_norm", "q_norm", "kv_norm"):
        w[norm] = torch.ones(d.q_lora if norm == "q_norm" else KV_LORA if norm == "kv_norm" else d.hidden,
                             device=device, dtype=bf)
    pages = -(-context // page)
    num_blocks = batch * pages + 1
    dtype = torch.float8_e4m3fn if kv == "fp8" else bf
    cache = (torch.randn(num_blocks, page, KV_LORA + ROPE, device=device, generator=g)
             * cache_std).to(dtype)
    st.t.update(
        h_in=torch.randn(batch, d.hidden, device=device, generator=g).to(bf),
        positions=torch.full((batch,), context - 1, device=device, dtype=torch.int64),
        cache=cache,
        block_table=torch.randperm(num_blocks - 1, device=device, generator=g)
        .view(batch, pages).to(torch.int32),
        seq_lens=torch.full((batch,), context, device=device, dtype=torch.int32),
        slots=None, k_scale=torch.tensor([0.05], device=device) if kv == "fp8" else None)
    st.t["h"] = st.t["h_in"]
    st.t["slots"] = st.t["block_table"][:, -1].long() * page + (context - 1) % page
    cos_sin = torch.randn(batch, ROPE, device=device, generator=g)
    st.t["cos"], st.t["sin"] = cos_sin.cos().to(bf), cos_sin.sin().to(bf)
    return st


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # DeepSeek rotates adjacent pairs of the 64 rope dims; cos/sin [B, 64] broadcast over heads.
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c = cos[..., 0::2].view(cos.shape[0], *([1] * (x.dim() - 2)), -1)
    s = sin[..., 0::2].view(sin.shape[0], *([1] * (x.dim() - 2)), -1)
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)


def route(st: State, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores, grouped top-k on score + bias, weights renormalised x scaling factor.
    Under EP a rank runs the pairs routed to its experts: modelled as each of its tokens
    choosing top-k among the rank's experts (the same pair count per rank, B * k)."""
    w, d = st.w, st.layout.dims
    scores = torch.sigmoid(F.linear(x, w["gate"]).float())                   # [B, 256]
    biased = scores + w["bias"]
    groups = biased.view(-1, d.n_group, d.experts // d.n_group).topk(2, -1).values.sum(-1)
    keep = torch.zeros_like(groups).scatter_(1, groups.topk(d.topk_group, -1).indices, 1.0)
    masked = biased.masked_fill(~keep.bool().repeat_interleave(d.experts // d.n_group, 1), -1e9)
    if st.layout.ep:
        masked = masked[:, :st.layout.experts]
        scores = scores[:, :st.layout.experts]
    ids = masked.topk(d.top_k, -1).indices
    weights = scores.gather(1, ids)
    return weights / weights.sum(-1, keepdim=True) * SCALING, ids.to(torch.int32)


class OursLayer:
    """The plugin's composition: block-FP8 linears, our fused MoE, the MLA adapter `mla`."""

    def __init__(self, st: State, mla: str = "triton", linear=fp8_linear) -> None:
        self.st, self.linear = st, linear
        spec = DecodeSpec(num_heads=st.layout.heads, scale=SOFTMAX_SCALE, page_size=st.t["cache"].shape[1],
                          kv_dtype=st.kv, device=st.t["h_in"].device, max_seq_len=st.context)
        self.adapter = adapter_class(mla)(spec)
        self.plan = self.adapter.plan(st.t["block_table"], st.t["seq_lens"], 1, longest=st.context)
        self.parts = [("attn_in", self.attn_in), ("attn", self.attn), ("attn_out", self.attn_out),
                      ("router", self.router), ("experts", self.experts), ("shared", self.shared)]

    def lin(self, x, name):
        return self.linear(x, *self.st.w[name])

    def attn_in(self):
        t, w, heads, d = self.st.t, self.st.w, self.st.layout.heads, self.st.layout.dims
        x = _rms(t["h"], w["in_norm"])
        q_c, kv_c, k_pe = self.lin(x, "qkv_a").split([d.q_lora, KV_LORA, ROPE], -1)
        q = self.lin(_rms(q_c, w["q_norm"]), "q_b").view(-1, heads, NOPE + ROPE)
        k_pe = _rope(k_pe, t["cos"], t["sin"])
        self.adapter.write(_rms(kv_c, w["kv_norm"]), k_pe, t["cache"], t["slots"], t["k_scale"])
        q_lat = torch.bmm(q[..., :NOPE].transpose(0, 1), w["uk_t"]).transpose(0, 1)
        t["q"] = torch.cat([q_lat, _rope(q[..., NOPE:], t["cos"], t["sin"])], -1).unsqueeze(1)

    def attn(self):
        t = self.st.t
        t["o_lat"], _ = self.adapter.decode(t["q"], t["cache"], t["block_table"], t["seq_lens"],
                                            plan=self.plan, k_scale=t["k_scale"])

    def attn_out(self):
        t, w = self.st.t, self.st.w
        o = torch.bmm(t["o_lat"].view(-1, self.st.layout.heads, KV_LORA).transpose(0, 1), w["uv"])
        t["h"] = t["h"] + self.lin(o.transpose(0, 1).reshape(t["h"].shape[0], -1), "o")

    def router(self):
        t = self.st.t
        t["x"] = _rms(t["h"], self.st.w["post_norm"])
        t["tw"], t["ids"] = route(self.st, t["x"])

    def experts(self):
        t, w = self.st.t, self.st.w
        t["y"] = fp8_fused_moe(t["x"], t["tw"], t["ids"], *w["w13"], *w["w2"])

    def shared(self):
        t = self.st.t
        gu = self.lin(t["x"], "sh_gu")
        i = gu.shape[-1] // 2
        t["h"] = t["h"] + t["y"] + self.lin(F.silu(gu[:, :i]) * gu[:, i:], "sh_d")

    def step(self):
        self.st.t["h"] = self.st.t["h_in"]  # every step starts from the same input
        for _, part in self.parts:
            part()


class CublasBlockwiseLinear:
    """The peer's linear: torch's blockwise scaled_mm wherever cuBLAS takes the shape; where
    it refuses one (seen for small M), our Triton GEMM, and `refused` records the shape."""

    def __init__(self) -> None:
        self.refused: set[tuple[int, int, int]] = set()

    def __call__(self, x, w, s):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        shape = (x2.shape[0], w.shape[0], w.shape[1])
        if shape not in self.refused:
            a, a_s = fp8_act_quant(x2)
            try:
                return blockwise_scaled_mm(a, a_s, w, s, x.dtype).view(*x.shape[:-1], w.shape[0])
            except RuntimeError:
                self.refused.add(shape)
        return fp8_linear(x, w, s, torch_ok=False)


class TorchBf16Layer(OursLayer):
    """Plain PyTorch: bf16 weights (cuBLAS), bmm-softmax-bmm attention over a dense latent
    cache, experts through torch._grouped_mm on expert-sorted rows."""

    def __init__(self, st: State) -> None:
        from ds_plugin.kernels.fp8_format import dequant_block

        self.st = st
        self.bf = {k: dequant_block(*v, torch.bfloat16) for k, v in st.w.items()
                   if isinstance(v, tuple)}
        t = st.t
        pos = torch.arange(st.context, device=t["h_in"].device)
        page = t["cache"].shape[1]
        rows = t["cache"][t["block_table"][:, pos // page].long(), pos % page]
        self.dense_cache = rows.to(torch.bfloat16)                            # [B, C, 576]
        self.parts = [("attn_in", self.attn_in), ("attn", self.attn), ("attn_out", self.attn_out),
                      ("router", self.router), ("experts", self.experts), ("shared", self.shared)]
        self.adapter = _DenseWrite(self.dense_cache, st.context)

    def lin(self, x, name):
        return F.linear(x, self.bf[name])

    def attn(self):
        t = self.st.t
        q = t["q"].squeeze(1)                                                 # [B, h, 576]
        s = torch.bmm(q, self.dense_cache.transpose(1, 2)) * SOFTMAX_SCALE   # [B, h, C]
        t["o_lat"] = torch.bmm(s.float().softmax(-1).to(q.dtype), self.dense_cache[..., :KV_LORA])

    def experts(self):
        t, d = self.st.t, self.st.layout.dims
        x, tw, ids = t["x"], t["tw"], t["ids"]
        flat = ids.reshape(-1).long()
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=self.bf["w13"].shape[0])
        offs = counts.cumsum(0).to(torch.int32)
        rows = x[order // d.top_k]
        gu = torch._grouped_mm(rows, self.bf["w13"].transpose(1, 2), offs=offs)
        i = gu.shape[-1] // 2
        y = torch._grouped_mm(F.silu(gu[:, :i]) * gu[:, i:], self.bf["w2"].transpose(1, 2), offs=offs)
        y = y.float() * tw.reshape(-1)[order, None]
        t["y"] = torch.zeros_like(x, dtype=torch.float32).index_add_(0, order // d.top_k, y).to(x.dtype)


class _DenseWrite:
    """The plain-PyTorch layer's cache write: the new row into the dense cache."""

    def __init__(self, dense: torch.Tensor, context: int) -> None:
        self.dense, self.pos = dense, context - 1

    def write(self, kv_c, k_pe, cache, slots, k_scale):
        self.dense[:, self.pos] = torch.cat([kv_c, k_pe], -1)


def layer_variants(st: State, flashinfer: str | None, mla: str = "triton") -> dict[str, OursLayer]:
    """ours (Triton MLA + our kernels), ours with the default MLA adapter on Hopper, the best
    peer composition, and plain PyTorch bf16."""
    out = {f"ours ({mla} MLA)": OursLayer(st, mla)}
    if flashinfer:
        out[f"ours ({flashinfer} MLA)"] = OursLayer(st, flashinfer)
        out[f"peers (cuBLAS blockwise + {flashinfer} + our MoE)"] = OursLayer(
            st, flashinfer, linear=CublasBlockwiseLinear())
    out["torch bf16 (cuBLAS, bmm attention, grouped_mm)"] = TorchBf16Layer(st)
    return out
