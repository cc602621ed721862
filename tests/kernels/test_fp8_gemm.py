"""fp8_block_gemm_nt vs the fp32 reference (dequantize both operands, fp32 matmul)."""

import pytest
import torch

CUDA = torch.cuda.is_available()

from ds_plugin.kernels.fp8_gemm import GemmConfig, fp8_block_gemm_nt, gemm_config
from ds_plugin.kernels.fp8_quant import fp8_act_quant
from ds_plugin.kernels.fp8_format import FP8
from ds_plugin.kernels.ref_fp8 import random_fp8_weight, ref_block_gemm_nt

DEV = "cuda" if CUDA else "cpu"
BF16_ULP = 2 ** -7  # relative spacing of bf16 at worst


def _operands(m, n, k, seed=0, pad=128):
    """a and its scales as views into NaN-poisoned wider buffers: a read past K or past a
    row's scales turns the output NaN."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=DEV).to(torch.bfloat16)
    q, s = fp8_act_quant(x)
    a_buf = torch.full((m, k + pad), 0x7F, dtype=torch.uint8, device=DEV).view(FP8)
    a_buf[:, :k] = q
    s_buf = torch.full((m, s.shape[1] + 3), float("nan"), device=DEV)
    s_buf[:, :s.shape[1]] = s
    b, b_s = random_fp8_weight((n, k), DEV, generator=g)
    return a_buf[:, :k], s_buf[:, :s.shape[1]], b, b_s


def assert_bf16_close(name, got, ref):
    # Each output is one fp32 sum rounded once to bf16; our sum order differs from the
    # reference's, so allow 1 bf16 ulp plus a floor for sums that cancel to near zero.
    assert got.shape == ref.shape and not got.float().isnan().any(), f"{name}: NaN or shape"
    g, r = got.float(), ref.float()
    tol = r.abs() * BF16_ULP + r.abs().max() * 2 ** -12
    bad = ((g - r).abs() > tol).nonzero()
    assert bad.numel() == 0, (f"{name}: {bad.shape[0]} outside 1 bf16 ulp, first {bad[0].tolist()}: "
                              f"{g[tuple(bad[0])].item()} vs {r[tuple(bad[0])].item()}")


SMALL = [(1, 200, 576), (5, 96, 300), (33, 130, 256), (70, 64, 128), (130, 136, 384)]
DSV3 = [(2112, 7168), (24576, 1536), (32768, 512), (7168, 16384), (4096, 7168), (7168, 2048)]
REAL = [(m, n, k) for m in (1, 16, 128, 4096) for n, k in DSV3]


@pytest.mark.parametrize("m,n,k", SMALL + (REAL if CUDA else []))
def test_block_gemm_matches_reference(m, n, k):
    a, a_s, b, b_s = _operands(m, n, k)
    out = fp8_block_gemm_nt(a, a_s, b, b_s)
    assert out.dtype == torch.bfloat16
    assert_bf16_close(f"{m=} {n=} {k=}", out, ref_block_gemm_nt(a, a_s, b, b_s))


@pytest.mark.parametrize("split", [1, 2, 3])
def test_split_k_and_tiles_agree(split):
    # Every tile shape and K split must compute the same function.
    a, a_s, b, b_s = _operands(20, 100, 640, seed=split)
    cfg = GemmConfig(block_m=16, block_n=32, num_warps=4, num_stages=2, split_k=split)
    out = fp8_block_gemm_nt(a, a_s, b, b_s, config=cfg)
    assert_bf16_close(f"{split=}", out, ref_block_gemm_nt(a, a_s, b, b_s))


def test_fp32_output_and_empty_shapes():
    a, a_s, b, b_s = _operands(3, 64, 128)
    out = fp8_block_gemm_nt(a, a_s, b, b_s, out_dtype=torch.float32)
    ref = ref_block_gemm_nt(a, a_s, b, b_s, out_dtype=torch.float32)
    assert torch.allclose(out, ref, rtol=2 ** -16, atol=ref.abs().max().item() * 2 ** -20)
    e = fp8_block_gemm_nt(a[:0], a_s[:0], b, b_s)
    assert e.shape == (0, 64)


def test_small_m_splits_k_on_many_sms():
    cfg = gemm_config(1, 2112, 7168, num_sms=132)  # H200: 33 N tiles alone fill a quarter
    assert cfg.split_k == 8 and cfg.block_m == 16
    assert gemm_config(4096, 7168, 2048, num_sms=132).split_k == 1


def test_bad_scale_shape_names_tensor():
    a, a_s, b, b_s = _operands(2, 128, 256)
    with pytest.raises(ValueError, match="b_s must be"):
        fp8_block_gemm_nt(a, a_s, b, b_s[:, :1])
    with pytest.raises(TypeError, match="float8"):
        fp8_block_gemm_nt(a.float(), a_s, b, b_s)
