"""One prefill chunk (new tokens, optionally after a cached prefix) through a DeepSeek-V3 layer
at one rank's sizes: our block-FP8 linears (`fp8_linear` hands large M to torch's blockwise
scaled_mm), attention on decompressed K/V (SDPA: what vLLM's FA prefill computes), and the
routed experts three ways on the same routing: ours (`fp8_fused_moe`, its prefill path by
shape), rowwise-FP8 `torch._scaled_grouped_mm` and bf16 `torch._grouped_mm` (these two are
timed on expert-sorted rows: the sort, gather, quantization and combine are left out, which
flatters them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import decode_layer as L
from ds_plugin.kernels.fp8_format import dequant_block, quant_block
from ds_plugin.kernels.fp8_linear import fp8_linear
from ds_plugin.kernels.fp8_moe import fp8_fused_moe


def _sorted_offsets(ids: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = ids.reshape(-1).long()
    order = flat.argsort()
    offs = torch.bincount(flat, minlength=experts).cumsum(0).to(torch.int32)
    return order, offs


def measure(layout: L.Layout, tokens: int, prefix: int, timer, dev: str = "cuda") -> dict:
    d = layout.dims
    st = L.build(layout, 1, 64, "bf16", dev, page=64 if dev == "cuda" else 16)  # weights only
    w, heads = st.w, layout.heads
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(tokens, d.hidden, device=dev, generator=g).to(torch.bfloat16)
    kv_b = quant_block(torch.randn(heads * (L.NOPE + L.V_DIM), L.KV_LORA, device=dev,
                                   generator=g) / L.KV_LORA ** 0.5)
    latent = torch.randn(prefix + tokens, L.KV_LORA, device=dev, generator=g).to(torch.bfloat16)
    q = torch.randn(1, heads, tokens, L.NOPE + L.ROPE, device=dev, generator=g).to(torch.bfloat16)
    k_pe = torch.randn(1, 1, prefix + tokens, L.ROPE, device=dev, generator=g).to(torch.bfloat16)
    mask = causal_lower_right(tokens, prefix + tokens)
    attn_out = torch.randn(tokens, heads * L.V_DIM, device=dev, generator=g).to(torch.bfloat16)

    def linears():
        y = fp8_linear(x, *w["qkv_a"])
        fp8_linear(y[:, :d.q_lora].contiguous(), *w["q_b"])
        fp8_linear(latent, *kv_b)
        o = fp8_linear(attn_out, *w["o"])
        gu = fp8_linear(o, *w["sh_gu"])
        fp8_linear(gu[:, :layout.shared_inter].contiguous(), *w["sh_d"])

    kv = fp8_linear(latent, *kv_b).view(1, prefix + tokens, heads, L.NOPE + L.V_DIM).transpose(1, 2)
    k = torch.cat([kv[..., :L.NOPE], k_pe.expand(1, heads, -1, -1)], -1)
    v = kv[..., L.NOPE:]

    def attention():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=L.SOFTMAX_SCALE)

    tw, ids = L.route(st, x)
    w13, s13 = w["w13"]
    w2, s2 = w["w2"]

    def ours():
        return fp8_fused_moe(x, tw, ids, w13, s13, w2, s2)

    order, offs = _sorted_offsets(ids, layout.experts)
    rows = x[order // d.top_k]
    i = layout.expert_inter
    w13b, w2b = dequant_block(w13, s13, torch.bfloat16), dequant_block(w2, s2, torch.bfloat16)

    def bf16():
        gu = torch._grouped_mm(rows, w13b.transpose(1, 2), offs=offs)
        return torch._grouped_mm(F.silu(gu[:, :i]) * gu[:, i:], w2b.transpose(1, 2), offs=offs)

    fp8 = torch.float8_e4m3fn
    rq, actq = rows.to(fp8), torch.randn(rows.shape[0], i, device=dev, generator=g).to(fp8)
    w13q, w2q = w13b.to(fp8), w2b.to(fp8)
    ones_r = torch.ones(rows.shape[0], device=dev)

    def scaled():
        torch._scaled_grouped_mm(rq, w13q.transpose(1, 2), ones_r,
                                 torch.ones(layout.experts, 2 * i, device=dev), offs=offs,
                                 out_dtype=torch.bfloat16, use_fast_accum=True)
        return torch._scaled_grouped_mm(actq, w2q.transpose(1, 2), ones_r,
                                        torch.ones(layout.experts, d.hidden, device=dev),
                                        offs=offs, out_dtype=torch.bfloat16, use_fast_accum=True)

    flop = 2 * tokens * d.top_k * d.hidden * 3 * i
    us = {"linears (fp8_linear)": timer(linears), "attention (SDPA)": timer(attention),
          "router": timer(lambda: L.route(st, x))}
    for name, fn in (("experts ours", ours), ("experts rowwise-FP8 _scaled_grouped_mm", scaled),
                     ("experts bf16 _grouped_mm", bf16)):
        try:
            us[name] = timer(fn)
        except Exception as e:  # noqa: BLE001 - reported
            us[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    ours_total = sum(v for k, v in us.items() if isinstance(v, float) and not k.startswith("experts ")
                     ) + (us["experts ours"] if isinstance(us["experts ours"], float) else 0.0)
    us["layer (ours)"] = ours_total
    row = {"layout": layout.name, "tokens": tokens, "prefix": prefix, "us": us,
           "expert_tflops": {k: flop / v / 1e6 for k, v in us.items()
                             if k.startswith("experts") and isinstance(v, float)}}
    del st, w13b, w2b, w13q, w2q
    if dev == "cuda":
        torch.cuda.empty_cache()
    return row
