"""INT8 GEMM: out = (a * a_s) @ (b * b_s).T on int8 tensor cores, in int8_format's two layouts.

- per channel: a_s (M, 1) per token, b_s (N, 1) per output row. The whole K loop
  accumulates in int32 (exact, int8_format), scaled once in the epilogue.
- per block: a_s (M, ceil(K/128)) per token group, b_s (ceil(N/128), ceil(K/128)). Each
  128-deep K block is an exact int32 dot, scaled into an fp32 accumulator (as fp8_gemm does).

Tiles and split-K follow fp8_gemm's per-M-bucket choice (`gemm_config`): the same operand
bytes per K step, the same weight-bandwidth-bound decode regime. Split-K partials are fp32
(scaled) and summed by a second small kernel that rounds once.
`ref_int8.ref_int8_gemm_nt` is the fp32 twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_gemm import GemmConfig, gemm_config
from ds_plugin.kernels.int8_format import BLOCK, PER_GROUP, PER_TOKEN, ceil_div
from ds_plugin.kernels.int8_quant import int8_act_quant


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a small number still exercises split-K


@triton.jit
def _int8_gemm_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K,
                      stride_am, stride_asm, stride_bn, stride_bsn, stride_cs, stride_cm,
                      kb_per_split,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, BLOCKWISE: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    band = pid // (GROUP_M * num_n)
    first_m = band * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % rows
    pid_n = (pid % (GROUP_M * num_n)) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < N
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn
    kb0 = pid_k * kb_per_split
    kb1 = tl.minimum(kb0 + kb_per_split, tl.cdiv(K, BLOCK_K))
    if BLOCKWISE:
        as_rows = as_ptr + offs_m * stride_asm
        bs_rows = bs_ptr + (offs_n // BLOCK_K) * stride_bsn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kb in range(kb0, kb1):
            k = kb * BLOCK_K + offs_k
            k_ok = k < K
            a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
            b = tl.load(b_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            a_s = tl.load(as_rows + kb, mask=m_ok, other=0.0)
            b_s = tl.load(bs_rows + kb, mask=n_ok, other=0.0)
            part = tl.dot(a, tl.trans(b), out_dtype=tl.int32)
            acc += part.to(tl.float32) * a_s[:, None] * b_s[None, :]
    else:
        iacc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for kb in range(kb0, kb1):
            k = kb * BLOCK_K + offs_k
            k_ok = k < K
            a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
            b = tl.load(b_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            iacc = tl.dot(a, tl.trans(b), iacc, out_dtype=tl.int32)
        a_s = tl.load(as_ptr + offs_m * stride_asm, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptr + offs_n * stride_bsn, mask=n_ok, other=0.0)
        acc = iacc.to(tl.float32) * a_s[:, None] * b_s[None, :]
    c = c_ptr + pid_k.to(tl.int64) * stride_cs + offs_m.to(tl.int64)[:, None] * stride_cm \
        + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _split_k_sum_kernel(part_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _check(a, a_s, b, b_s) -> bool:
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_gemm_nt: a and b must be int8, got {a.dtype}, {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"int8_gemm_nt: need a (M,K), b (N,K); got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[0]
    channel = (tuple(a_s.shape), tuple(b_s.shape)) == ((m, 1), (n, 1))
    block = (tuple(a_s.shape), tuple(b_s.shape)) == (
        (m, ceil_div(k, BLOCK)), (ceil_div(n, BLOCK), ceil_div(k, BLOCK)))
    if not (channel or block):
        raise ValueError(
            f"int8_gemm_nt: scales a_s {tuple(a_s.shape)}, b_s {tuple(b_s.shape)} fit neither "
            f"per-channel ({(m, 1)}, {(n, 1)}) nor 128x128 block "
            f"({(m, ceil_div(k, BLOCK))}, {(ceil_div(n, BLOCK), ceil_div(k, BLOCK))}) layout")
    for name, t in (("a", a), ("b", b), ("a_s", a_s), ("b_s", b_s)):
        if t.stride(-1) != 1 and t.shape[-1] != 1:
            raise ValueError(f"int8_gemm_nt: {name} needs a contiguous last dim, strides "
                             f"{t.stride()}")
    # b_s tells the layouts apart (ceil(N/128) == N only for N = 1, where both agree).
    return block and not channel


def int8_gemm_nt(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                 out_dtype: torch.dtype = torch.bfloat16,
                 config: GemmConfig | None = None) -> torch.Tensor:
    """out = dequant(a) @ dequant(b).T.

    Args:
        a: (M, K) int8 activations (int8_act_quant), last dim contiguous.
        a_s: (M, 1) per-token scales, or (M, ceil(K/128)) per-token-group scales.
        b: (N, K) int8 weight, last dim contiguous.
        b_s: (N, 1) `weight_scale` (per channel) with per-token a_s, or the
            (ceil(N/128), ceil(K/128)) `weight_scale_inv` (block) with per-group a_s.
        out_dtype: bf16 (default), fp16 or fp32.
        config: tile override (benchmarks); default fp8_gemm's `gemm_config(M, N, K)`.
    Returns:
        (M, N) out_dtype. N and K need not be multiples of 128.
    """
    blockwise = _check(a, a_s, b, b_s)
    m, k = a.shape
    n = b.shape[0]
    out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    cfg = config or gemm_config(m, n, k, _num_sms(a.device))
    k_blocks = ceil_div(k, BLOCK)
    split = min(cfg.split_k, k_blocks)
    kb_per_split = ceil_div(k_blocks, split)
    split = ceil_div(k_blocks, kb_per_split)
    c = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=a.device)
    grid = (ceil_div(m, cfg.block_m) * ceil_div(n, cfg.block_n), split)
    _int8_gemm_kernel[grid](
        a, a_s, b, b_s, c, m, n, k,
        a.stride(0), a_s.stride(0), b.stride(0), b_s.stride(0),
        c.stride(0) if split > 1 else 0, c.stride(-2), kb_per_split,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=BLOCK, GROUP_M=cfg.group_m,
        BLOCKWISE=blockwise, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if split > 1:
        numel = m * n
        _split_k_sum_kernel[(ceil_div(numel, 1024),)](c, out, numel, SPLIT=split, BLOCK=1024)
    return out


def int8_linear(x: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ dequant(w (N, K) int8, w_s).T: activations quantized per token (against
    per-channel w_s (N, 1)) or per token group (against block w_s), then int8_gemm_nt."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    granularity = PER_TOKEN if tuple(w_s.shape) == (w.shape[0], 1) else PER_GROUP
    a, a_s = int8_act_quant(x2, granularity)
    y = int8_gemm_nt(a, a_s, w, w_s, out_dtype=x.dtype)
    return y.view(*x.shape[:-1], w.shape[0])
