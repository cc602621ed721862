"""fp8_linear, the served block-FP8 linear: activation quant + per-shape GEMM choice."""

import torch

from ds_plugin.kernels.fp8_format import quant_block, quant_groups
from ds_plugin.kernels.fp8_linear import TORCH_FROM_M, fp8_linear, gemm_path, torch_path_agrees
from ds_plugin.kernels.ref_fp8 import ref_block_gemm_nt

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_gemm_path_switches_once_per_shape_and_needs_whole_k_blocks():
    for (n, k), m0 in TORCH_FROM_M.items():
        paths = [gemm_path(m, n, k) for m in (1, m0 - 1, m0, 4 * m0)]
        assert paths == ["triton", "triton", "torch", "torch"], (n, k)
    assert gemm_path(4096, 256, 300) == "triton"  # cuBLAS blockwise needs K % 128 == 0


def test_matches_the_fp32_reference():
    g = torch.Generator().manual_seed(0)
    q, s = quant_block(torch.randn(200, 384, generator=g) * 0.05)
    q, s = q.to(DEV), s.to(DEV)
    ok = torch_path_agrees(q, s, torch.bfloat16)
    assert ok == (DEV == "cuda")  # the CPU torch build has no blockwise scaled_mm
    x = torch.randn(2, 3, 384, generator=g).to(torch.bfloat16).to(DEV)
    y = fp8_linear(x, q, s, torch_ok=ok)
    ref = ref_block_gemm_nt(*quant_groups(x.reshape(6, 384)), q, s).view(2, 3, 200).float()
    assert y.shape == (2, 3, 200)
    assert ((y.float() - ref).abs() <= ref.abs() * 2 ** -7 + ref.abs().max() * 2 ** -12).all()
