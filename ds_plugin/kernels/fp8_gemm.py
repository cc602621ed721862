"""Block-FP8 GEMM: out = (a * a_s) @ (b * b_s).T with DeepSeek-V3's scale layout.

One Triton kernel serves every M: tiles are picked per M bucket (`gemm_config`), and
for small M (decode) the K loop is split across programs so that a weight of a few
thousand rows still spreads over every SM; a second small kernel adds the fp32 partial
sums and rounds once.
`ref_fp8.ref_block_gemm_nt` is the fp32 twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ds_plugin.kernels.fp8_format import BLOCK, FP8, ceil_div


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split_k: int = 1
    group_m: int = 8


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: any small number exercises the split-K path


def gemm_config(m: int, n: int, k: int, num_sms: int) -> GemmConfig:
    """Tile choice per M bucket. Small M is weight-bandwidth bound: narrow N tiles and
    split-K to put ~2 programs on every SM. Large M is tensor-core bound: 128x128 tiles."""
    k_blocks = ceil_div(k, BLOCK)
    if m <= 64:
        cfg = GemmConfig(block_m=16 if m <= 16 else (32 if m <= 32 else 64),
                         block_n=64, num_warps=4, num_stages=4)
    elif m <= 256:
        cfg = GemmConfig(block_m=64, block_n=128, num_warps=4, num_stages=4)
    else:
        # 4 stages beat 3 by up to 1.6x at M = 512 on the H200 (benchmarks/README.md)
        cfg = GemmConfig(block_m=128, block_n=128, num_warps=8, num_stages=4)
    tiles = ceil_div(m, cfg.block_m) * ceil_div(n, cfg.block_n)
    split = 1
    while tiles * split < 2 * num_sms and split * 2 <= k_blocks // 2 and split < 16:
        split *= 2
    return GemmConfig(cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, split,
                      cfg.group_m)


@triton.jit
def _block_gemm_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K,
                       stride_am, stride_asm, stride_bn, stride_bsn, stride_cs, stride_cm,
                       kb_per_split,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
    # Program ids: axis 0 walks output tiles in GROUP_M-row bands (L2 reuse of b),
    # axis 1 is the K split.
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
    as_rows = as_ptr + offs_m * stride_asm
    bs_rows = bs_ptr + (offs_n // BLOCK_K) * stride_bsn

    kb0 = pid_k * kb_per_split
    kb1 = tl.minimum(kb0 + kb_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb0, kb1):
        k = kb * BLOCK_K + offs_k
        k_ok = k < K
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        a_s = tl.load(as_rows + kb, mask=m_ok, other=0.0)
        b_s = tl.load(bs_rows + kb, mask=n_ok, other=0.0)
        # One 128-deep K block shares one scale per row of a and per column of b, so the
        # block's dot product is exact in fp32 before scaling.
        acc += tl.dot(a, tl.trans(b)) * a_s[:, None] * b_s[None, :]

    c = c_ptr + pid_k.to(tl.int64) * stride_cs + offs_m.to(tl.int64)[:, None] * stride_cm \
        + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _split_k_sum_kernel(part_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    # out = sum over splits of the fp32 partials, rounded once to out's dtype: one pass.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _check(a, a_s, b, b_s):
    if a.dtype != FP8 or b.dtype != FP8:
        raise TypeError(f"fp8_block_gemm_nt: a and b must be float8_e4m3fn, got {a.dtype}, {b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_block_gemm_nt: need a (M,K), b (N,K); got {tuple(a.shape)}, {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[0]
    if tuple(a_s.shape) != (m, ceil_div(k, BLOCK)):
        raise ValueError(f"fp8_block_gemm_nt: a_s must be ({m}, {ceil_div(k, BLOCK)}), got {tuple(a_s.shape)}")
    if tuple(b_s.shape) != (ceil_div(n, BLOCK), ceil_div(k, BLOCK)):
        raise ValueError(f"fp8_block_gemm_nt: b_s must be ({ceil_div(n, BLOCK)}, "
                         f"{ceil_div(k, BLOCK)}), got {tuple(b_s.shape)}")
    for name, t in (("a", a), ("b", b), ("a_s", a_s), ("b_s", b_s)):
        if t.stride(-1) != 1:
            raise ValueError(f"fp8_block_gemm_nt: {name} needs a contiguous last dim, strides {t.stride()}")


def fp8_block_gemm_nt(a: torch.Tensor, a_s: torch.Tensor, b: torch.Tensor, b_s: torch.Tensor,
                      out_dtype: torch.dtype = torch.bfloat16,
                      config: GemmConfig | None = None) -> torch.Tensor:
    """out = dequant(a) @ dequant(b).T.

    Args:
        a: (M, K) float8_e4m3fn activations, last dim contiguous.
        a_s: (M, ceil(K/128)) float32, one scale per token per 128 channels (fp8_act_quant).
        b: (N, K) float8_e4m3fn weight, last dim contiguous.
        b_s: (ceil(N/128), ceil(K/128)) float32, the checkpoint's `weight_scale_inv`.
        out_dtype: bf16 (default), fp16 or fp32.
        config: tile override (benchmarks); default `gemm_config(M, N, K)`.
    Returns:
        (M, N) out_dtype. N and K need not be multiples of 128.
    """
    _check(a, a_s, b, b_s)
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
    split = ceil_div(k_blocks, kb_per_split)  # no empty splits
    c = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=a.device)
    grid = (ceil_div(m, cfg.block_m) * ceil_div(n, cfg.block_n), split)
    _block_gemm_kernel[grid](
        a, a_s, b, b_s, c, m, n, k,
        a.stride(0), a_s.stride(0), b.stride(0), b_s.stride(0),
        c.stride(0) if split > 1 else 0, c.stride(-2), kb_per_split,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=BLOCK, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if split > 1:
        numel = m * n
        _split_k_sum_kernel[(ceil_div(numel, 1024),)](c, out, numel, SPLIT=split, BLOCK=1024)
    return out
