"""fp8_act_quant / fp8_silu_mul_quant vs ref_fp8 (bitwise where the math is the same)."""

import pytest
import torch

CUDA = torch.cuda.is_available()

from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_block_dequant, fp8_silu_mul_quant
from ds_plugin.kernels.fp8_format import FP8, dequant_block, dequant_groups, quant_block, quant_groups
from ds_plugin.kernels.ref_fp8 import ref_silu_mul

DEV = "cuda" if CUDA else "cpu"
NAN_FP8 = 0x7F  # e4m3fn NaN code


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t.view(torch.int32)


def assert_bitwise(name, got, ref):
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    diff = (_bits(got) != _bits(ref)).nonzero()
    assert diff.numel() == 0, (f"{name}: {diff.shape[0]} elements differ, first at {diff[0].tolist()}: "
                               f"{got[tuple(diff[0])].item()} vs {ref[tuple(diff[0])].item()}")


def _inputs(m, k, dtype=torch.bfloat16, pad=64, seed=0):
    """x as a view into a NaN-filled wider buffer (reading past K shows up as NaN), with an
    all-zero group, a tiny group and large values mixed in."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    buf = torch.full((m, k + pad), float("nan"), dtype=dtype, device=DEV)
    x = buf[:, :k]
    x.copy_(torch.randn(m, k, generator=g, device=DEV) * 4)
    if m > 1 and k >= 128:
        x[1, :128] = 0
    if m > 2:
        x[2] *= 1e-6
        x[2, :3] = -0.0  # the sign of zero must survive
        x[2, 3:6] = torch.tensor([-1e-30, 1e-30, -3e-8])  # round to (signed) zero
    return x


SMALL = [(1, 128), (3, 300), (4, 576), (2, 64)]
REAL = [(1, 7168), (128, 7168), (4096, 1536), (33, 576)]


@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("m,k", SMALL + (REAL if CUDA else []))
def test_act_quant_bitwise(m, k, ue8m0):
    x = _inputs(m, k)
    q, s = fp8_act_quant(x, ue8m0=ue8m0)
    rq, rs = quant_groups(x, ue8m0=ue8m0)
    assert_bitwise("scale", s, rs)
    assert_bitwise("q", q, rq)
    if ue8m0:  # every scale a power of two: mantissa bits all zero
        assert (_bits(s) & 0x7FFFFF).eq(0).all()


def test_act_quant_round_trip_error_within_half_fp8_ulp():
    # e4m3 has 3 mantissa bits: rounding error <= 2**-4 relative to each value's magnitude
    # (subnormals: 2**-10 of the group scale) -- checks scale and code together.
    x = _inputs(5, 384, dtype=torch.float32)
    q, s = fp8_act_quant(x)
    back = dequant_groups(q, s)
    bound = x.abs() * 2 ** -4 + s.repeat_interleave(128, 1) * 2 ** -9
    assert ((back - x).abs() <= bound).all()


def test_act_quant_empty_batch():
    q, s = fp8_act_quant(torch.empty(0, 256, dtype=torch.bfloat16, device=DEV))
    assert q.shape == (0, 256) and s.shape == (0, 2)


def test_act_quant_rejects_strided_last_dim():
    x = torch.randn(256, 4, device=DEV).t()
    with pytest.raises(ValueError, match="unit stride"):
        fp8_act_quant(x)


@pytest.mark.parametrize("t,i", [(3, 128), (5, 320)] + ([(512, 2048)] if CUDA else []))
def test_silu_mul_quant_matches_reference(t, i):
    # silu differs from torch's in the last fp32 bit (exp vs sigmoid), which can move a
    # code by one e4m3 step: bound the dequantized difference by one fp8 ulp (2**-3 rel).
    gu = _inputs(t, 2 * i, seed=1)
    q, s = fp8_silu_mul_quant(gu)
    rq, rs = quant_groups(ref_silu_mul(gu))
    got, ref = dequant_groups(q, s), dequant_groups(rq, rs)
    assert torch.allclose(s, rs, rtol=2 ** -20, atol=0)
    assert ((got - ref).abs() <= ref.abs() * 2 ** -3 + rs.repeat_interleave(128, 1)[:, :i] * 2 ** -9).all()
    assert (_bits(q) != _bits(rq)).float().mean() < 0.01


def test_block_dequant_matches_reference():
    w = torch.randn(200, 300, device=DEV)
    q, s = quant_block(w)
    got = fp8_block_dequant(q, s, torch.float32)
    assert_bitwise("dequant", got, dequant_block(q, s))
