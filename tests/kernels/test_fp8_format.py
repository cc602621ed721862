"""fp8_format's torch codec: the one definition of DeepSeek's block-FP8 numbers."""

import pytest
import torch

from ds_plugin.kernels.fp8_format import (BLOCK, E4M3_MAX, FP8, block_grid, dequant_block,
                                          dequant_groups, quant_block, quant_groups,
                                          round_scale_ue8m0)


def test_block_round_trip_within_e4m3_precision():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=g) * torch.logspace(-3, 1, 200)[None, :]
    q, s = quant_block(w)
    assert q.dtype == FP8 and s.shape == (3, 2) == block_grid(tuple(w.shape))
    back = dequant_block(q, s)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of each value, plus the subnormal
    # floor (2^-9 of the block's scale) for small entries.
    blockmax = torch.zeros_like(w)
    for i in range(3):
        for j in range(2):
            sl = (slice(i * BLOCK, (i + 1) * BLOCK), slice(j * BLOCK, (j + 1) * BLOCK))
            blockmax[sl] = w[sl].abs().max()
    bound = w.abs() * 2.0 ** -4 + blockmax / E4M3_MAX * 2.0 ** -9 + 1e-12
    assert ((back - w).abs() <= bound).all()
    # Each block's absmax lands exactly on 448.
    assert q.float().abs().amax() == E4M3_MAX
    with pytest.raises(ValueError, match="scale grid"):
        dequant_block(q, s[:, :1])


def test_expert_stacks_quantize_per_expert():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 260, 130, generator=g)
    q, s = quant_block(w)
    assert s.shape == (3, 3, 2)
    for e in range(3):
        qe, se = quant_block(w[e])
        assert torch.equal(q[e].view(torch.uint8), qe.view(torch.uint8)) and torch.equal(s[e], se)
    assert torch.equal(dequant_block(q, s, torch.bfloat16)[1], dequant_block(q[1], s[1], torch.bfloat16))


def test_groups_zero_group_and_partial_group():
    x = torch.zeros(2, 300)
    x[1, 260:] = torch.linspace(-3, 3, 40)
    q, s = quant_groups(x)
    assert s.shape == (2, 3) and q.shape == (2, 300)
    assert torch.equal(q[0].float(), torch.zeros(300))  # all-zero rows stay finite and zero
    assert s.isfinite().all() and (s > 0).all()
    assert torch.allclose(dequant_groups(q, s)[1, 260:], x[1, 260:], rtol=2 ** -4)


def test_ue8m0_scales_are_powers_of_two_not_below_the_exact_scale():
    s = torch.tensor([1.0, 1.5, 3.0e-5, 2.0 ** -20, 0.75])
    r = round_scale_ue8m0(s)
    assert torch.equal(r, torch.tensor([1.0, 2.0, 2.0 ** -15, 2.0 ** -20, 1.0]))
    _, sx = quant_groups(torch.randn(4, 256), ue8m0=True)
    assert torch.equal(torch.log2(sx), torch.log2(sx).round())
