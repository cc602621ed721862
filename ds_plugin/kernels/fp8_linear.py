"""The block-FP8 linear layer as served: activation quant, then a per-shape GEMM choice.

`fp8_linear` is what ds_fp8's CUDA linear method calls for every layer, and what benchmarks
call to time exactly that dispatch (this module imports no vLLM). For each (M, N, K) it runs
our Triton `fp8_block_gemm_nt` or torch's cuBLAS blockwise `scaled_mm`, whichever the H200
table below says is faster; torch's path is used only where this torch build runs it and
agrees with ours (`torch_path_agrees`, checked once per weight at load).
"""

from __future__ import annotations

import torch

from ds_plugin.kernels.fp8_format import BLOCK, calc_diff
from ds_plugin.kernels.fp8_gemm import fp8_block_gemm_nt
from ds_plugin.kernels.fp8_quant import fp8_act_quant

# (N, K) -> the smallest M from which torch's cuBLAS blockwise GEMM beat our Triton kernel
# on the H200 (benchmarks/README.md, 2026-11-29). Below it the weight read dominates and
# our split-K kernel wins. Shapes not measured use TORCH_MIN_M.
TORCH_FROM_M = {(2112, 7168): 128, (24576, 1536): 128, (32768, 512): 64, (7168, 16384): 64,
                (4096, 7168): 128, (7168, 2048): 16}
TORCH_MIN_M = 128


def gemm_path(m: int, n: int, k: int) -> str:
    """'torch' (blockwise scaled_mm) or 'triton' (fp8_block_gemm_nt) for an (M, N, K) GEMM.
    torch's path needs K a whole number of 128-blocks (cuBLAS blockwise)."""
    if k % BLOCK == 0 and m >= TORCH_FROM_M.get((n, k), TORCH_MIN_M):
        return "torch"
    return "triton"


def blockwise_scaled_mm(a, a_s, w, w_s, out_dtype):
    """torch's cuBLAS blockwise GEMM on our layouts: a's scales go M-major, w as (K, N)."""
    import torch.nn.functional as F

    st = F.ScalingType
    # cuBLAS checks the strides literally: exactly (1, M).
    a_s_mmajor = torch.empty_strided(a_s.shape, (1, a_s.shape[0]), dtype=a_s.dtype,
                                     device=a_s.device).copy_(a_s)
    return F.scaled_mm(a, w.t(), a_s_mmajor, st.BlockWise1x128, w_s.t(),
                       st.BlockWise128x128, output_dtype=out_dtype)


def torch_path_agrees(w: torch.Tensor, w_s: torch.Tensor, dtype: torch.dtype) -> bool:
    """Run torch's blockwise GEMM once for this weight and compare it with our kernel.

    False when this torch/cuBLAS build rejects the shape or disagrees (beyond fp8 GEMM
    noise, calc_diff 1e-3); the layer then keeps to our kernel. Once per layer, at load.
    """
    if w.shape[1] % BLOCK:
        return False
    g = torch.Generator(device=w.device).manual_seed(0)
    a, a_s = fp8_act_quant(torch.randn(TORCH_MIN_M, w.shape[1], device=w.device,
                                       generator=g).to(dtype))
    try:
        theirs = blockwise_scaled_mm(a, a_s, w, w_s, dtype)
    except (RuntimeError, ValueError, NotImplementedError):  # what torch raises for "no kernel"
        return False
    return calc_diff(theirs, fp8_block_gemm_nt(a, a_s, w, w_s, out_dtype=dtype)) < 1e-3


def fp8_linear(x: torch.Tensor, w: torch.Tensor, w_s: torch.Tensor,
               torch_ok: bool = True) -> torch.Tensor:
    """x (..., K) bf16 @ dequant(w (N, K) fp8, w_s).T on CUDA, per-shape GEMM choice."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    a, a_s = fp8_act_quant(x2)
    n = w.shape[0]
    if torch_ok and gemm_path(x2.shape[0], n, k) == "torch":
        y = blockwise_scaled_mm(a, a_s, w, w_s, x.dtype)
    else:
        y = fp8_block_gemm_nt(a, a_s, w, w_s, out_dtype=x.dtype)
    return y.view(*x.shape[:-1], n)
