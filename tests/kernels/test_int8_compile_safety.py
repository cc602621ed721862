"""The INT8 kernel entry points survive torch.compile(fullgraph=True) and CUDA-graph replay
bitwise (test_compile_safety's check, one shape each, both scale layouts)."""

import pytest
import torch

from ds_plugin.kernels import (int8_act_quant, int8_fused_moe, int8_gemm_nt, int8_grouped_gemm_nt,
                               int8_silu_mul_quant, moe_align)
from ds_plugin.kernels.ref_int8 import random_int8_weight
from tests.kernels.test_compile_safety import _check

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch.compile lowers Triton kernels for a GPU; the CPU interpreter cannot be compiled")
GRANS = {False: "token", True: "group"}


@pytest.mark.parametrize("blockwise", [False, True], ids=["channel", "block"])
def test_int8_act_quant_and_silu_mul(blockwise):
    x = torch.randn(5, 7168, device="cuda", dtype=torch.bfloat16)
    _check(lambda x: int8_act_quant(x, GRANS[blockwise]), (x,))
    _check(lambda x: int8_silu_mul_quant(x, GRANS[blockwise]), (x,))


@pytest.mark.parametrize("blockwise", [False, True], ids=["channel", "block"])
def test_int8_gemm_nt(blockwise):
    # Decode-sized M: the split-K path, so both of its kernels.
    g = torch.Generator(device="cuda").manual_seed(1)
    w, w_s = random_int8_weight((2112, 7168), "cuda", blockwise, g)
    x = torch.randn(1, 7168, device="cuda", dtype=torch.bfloat16)

    def step(x, w, w_s):
        a, a_s = int8_act_quant(x, GRANS[blockwise])
        return int8_gemm_nt(a, a_s, w, w_s)
    _check(step, (x, w, w_s))


def _moe_inputs(blockwise, m=6, e=8, k=2, h=512, inter=256):
    g = torch.Generator(device="cuda").manual_seed(3)
    w13, w13_s = random_int8_weight((e, 2 * inter, h), "cuda", blockwise, g)
    w2, w2_s = random_int8_weight((e, h, inter), "cuda", blockwise, g)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=g)
    weights, ids = torch.randn(m, e, device="cuda", generator=g).softmax(-1).topk(k)
    return x, weights, ids, w13, w13_s, w2, w2_s


@pytest.mark.parametrize("blockwise", [False, True], ids=["channel", "block"])
def test_int8_grouped_gemm_and_fused_moe(blockwise):
    args = _moe_inputs(blockwise)
    x, _, ids, w13, w13_s, *_ = args

    def step(x, ids, w13, w13_s):
        sorted_ids, block_expert = moe_align(ids, w13.shape[0], 16)
        a, a_s = int8_act_quant(x, GRANS[blockwise])
        return int8_grouped_gemm_nt(a, a_s, w13, w13_s, sorted_ids, block_expert, ids.numel(),
                                    ids.shape[1])
    _check(step, (x, ids, w13, w13_s))
    _check(lambda *a: int8_fused_moe(*a), args)
