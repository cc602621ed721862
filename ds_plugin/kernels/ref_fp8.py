"""fp32 torch twins of the block-FP8 kernels (the oracles the tests compare against).

Formats, shared by every kernel in this package:

- Activations: `q` (M, K) float8_e4m3fn with `s` (M, ceil(K/128)) float32, one scale per
  token per 128 channels; x ~= q * s. A partial last group uses the channels it has.
- Weights (DeepSeek-V3 checkpoint layout): `w` (N, K) float8_e4m3fn with `weight_scale_inv`
  (ceil(N/128), ceil(K/128)) float32, one scale per 128x128 block; w ~= w_q * s.
- MoE experts stack those per expert: w13 (E, 2I, K) gate rows then up rows, w2 (E, H, I).

Pure torch, no Triton: this file is readable on its own and runs anywhere.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
GROUP = 128
# An all-zero group gets this amax so its scale stays finite and its codes are 0.
AMAX_EPS = 1e-10


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_scale_ue8m0(s: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two, exactly (bit arithmetic, no log2).

    A scale with a non-zero mantissa gets its exponent bumped by one and its mantissa
    cleared; an exact power of two is kept. Rounding up keeps |x / s| <= 448.
    """
    bits = s.contiguous().view(torch.int32)
    exp = (bits >> 23) & 0xFF
    exp = exp + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return (exp << 23).view(torch.float32)


def ref_act_quant(x: torch.Tensor, group: int = GROUP, ue8m0: bool = False):
    """Per-token-group FP8 quantization. x: (M, K) any float -> (q (M,K) fp8, s (M,G) fp32).

    scale = amax(|x_group|) / 448 (optionally rounded up to a power of two); q = x / scale
    rounded to nearest e4m3. Division is IEEE round-to-nearest, so a kernel can match bitwise.
    """
    m, k = x.shape
    g = ceil_div(k, group)
    xf = torch.zeros(m, g * group, dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    xg = xf.view(m, g, group)
    amax = xg.abs().amax(dim=2).clamp_min(AMAX_EPS)
    # Tensor / tensor: CUDA torch turns division by a Python scalar into multiplication by
    # its reciprocal (one ulp off); the kernel divides with IEEE round-to-nearest.
    s = amax / torch.full_like(amax, FP8_MAX)
    if ue8m0:
        s = round_scale_ue8m0(s)
    q = (xg / s[:, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(m, g * group)[:, :k].contiguous(), s


def ref_act_dequant(q: torch.Tensor, s: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """Inverse of ref_act_quant, in fp32: (M, K) fp8 with (M, G) scales -> (M, K) fp32."""
    k = q.shape[1]
    return q.float() * s.repeat_interleave(group, dim=1)[:, :k]


def ref_weight_quant(w: torch.Tensor, block: int = GROUP):
    """Quantize an (N, K) weight to fp8 with one scale per 128x128 block (checkpoint layout).

    Returns (w_q (N,K) fp8, weight_scale_inv (ceil(N/128), ceil(K/128)) fp32).
    """
    n, k = w.shape
    gn, gk = ceil_div(n, block), ceil_div(k, block)
    wf = torch.zeros(gn * block, gk * block, dtype=torch.float32, device=w.device)
    wf[:n, :k] = w.float()
    blocks = wf.view(gn, block, gk, block)
    amax = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_EPS)
    s = amax / FP8_MAX
    q = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(gn * block, gk * block)[:n, :k].contiguous(), s


def ref_weight_dequant(w_q: torch.Tensor, s: torch.Tensor, block: int = GROUP) -> torch.Tensor:
    """(N, K) fp8 weight with its block scales -> (N, K) fp32."""
    n, k = w_q.shape
    full = s.repeat_interleave(block, dim=0).repeat_interleave(block, dim=1)
    return w_q.float() * full[:n, :k]


def ref_block_gemm_nt(a_q, a_s, b_q, b_s, out_dtype=torch.bfloat16) -> torch.Tensor:
    """out (M, N) = dequant(a) @ dequant(b).T, accumulated in fp32, rounded once to out_dtype."""
    a = ref_act_dequant(a_q, a_s)
    b = ref_weight_dequant(b_q, b_s)
    return (a @ b.t()).to(out_dtype)


def moe_align_capacity(pairs: int, num_experts: int, block_m: int) -> int:
    """Upper bound of the padded length: every hit expert wastes at most block_m - 1 rows."""
    return ceil_div(pairs + min(pairs, num_experts) * (block_m - 1), block_m) * block_m


def ref_moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort (token, slot) pairs by expert and pad each expert's run to a multiple of block_m.

    The torch twin of fp8_moe.moe_align (and its path for batches past one program).

    Args:
        topk_ids: (M, k) int, expert of each token's k-th choice (ids in [0, num_experts)).
    Returns:
        sorted_ids: (P,) int32, flat pair index t*k + j, or M*k for a padding row.
        block_expert: (P / block_m,) int32, the expert of each block, -1 past the end.
        P is an upper bound, M*k + min(M*k, E)*(block_m - 1), rounded up to block_m.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    pairs = flat.numel()
    dev = flat.device
    cap = moe_align_capacity(pairs, num_experts, block_m)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev)
    counts.index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    pad_start = pad_end - padded
    cnt_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    rank = torch.arange(pairs, device=dev) - cnt_start[expert_of]
    sorted_ids = torch.full((cap,), pairs, dtype=torch.int32, device=dev)
    sorted_ids[pad_start[expert_of] + rank] = order.to(torch.int32)
    block_start = torch.arange(0, cap, block_m, device=dev)
    block_expert = torch.searchsorted(pad_end, block_start, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert


def ref_silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(T, 2I) -> (T, I) fp32: silu(gate) * up, gate = first half, up = second half."""
    i = gate_up.shape[1] // 2
    g, u = gate_up[:, :i].float(), gate_up[:, i:].float()
    return g * torch.sigmoid(g) * u


def ref_fused_moe(x, topk_weights, topk_ids, w13, w13_s, w2, w2_s, ue8m0: bool = False):
    """Block-FP8 MoE in fp32, one (token, expert) pair at a time.

    x: (M, H) bf16. topk_weights: (M, k) fp32. topk_ids: (M, k) int. w13: (E, 2I, H) fp8 with
    w13_s (E, ceil(2I/128), ceil(H/128)); w2: (E, H, I) fp8 with w2_s. Mirrors the kernel's
    quantization points: x is quantized per token group, the gate/up product is rounded to
    bf16, silu*mul is quantized again, the down product is weighted and summed in fp32.
    Returns (M, H) bf16.
    """
    m, top_k = topk_ids.shape
    xq, xs = ref_act_quant(x, ue8m0=ue8m0)
    xd = ref_act_dequant(xq, xs)
    out = torch.zeros(m, x.shape[1], dtype=torch.float32, device=x.device)
    for t in range(m):
        for j in range(top_k):
            e = int(topk_ids[t, j])
            h = (xd[t:t + 1] @ ref_weight_dequant(w13[e], w13_s[e]).t()).to(torch.bfloat16)
            a = ref_silu_mul(h)
            aq, as_ = ref_act_quant(a, ue8m0=ue8m0)
            y = ref_act_dequant(aq, as_) @ ref_weight_dequant(w2[e], w2_s[e]).t()
            out[t] += float(topk_weights[t, j]) * y[0]
    return out.to(torch.bfloat16)


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - cos-like similarity, 1 - 2<x,y> / (|x|^2 + |y|^2), in fp64; 0 when equal.

    Scale-free and insensitive to a few rounding flips, so it is the budget for results
    that pass through a second quantization (the MoE's SiLU output).
    """
    x, y = x.double(), y.double()
    denom = (x * x + y * y).sum()
    return float(1 - 2 * (x * y).sum() / denom) if denom > 0 else 0.0


def random_fp8_weight(shape, device, generator=None):
    """Random block-FP8 weight with normal-ish codes and block scales ~ 1/sqrt(K).

    Built without a full-precision copy (an expert stack for DeepSeek-V3 is 7.5 G codes).
    Returns (w_q fp8 of `shape`, scales (..., ceil(N/128), ceil(K/128)) fp32).
    """
    *lead, n, k = shape
    w = torch.empty(shape, dtype=FP8, device=device)
    flat = w.view(-1, n, k)
    for i in range(flat.shape[0]):
        flat[i] = torch.randn(n, k, device=device, generator=generator).to(FP8)
    s = torch.rand(*lead, ceil_div(n, GROUP), ceil_div(k, GROUP), device=device,
                   generator=generator) + 0.5
    return w, s / k ** 0.5
