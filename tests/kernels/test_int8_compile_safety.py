"""The INT8 kernel entry points survive torch.compile(fullgraph=True) and CUDA-graph replay
bitwise (test_compile_safety's check), both scale layouts: the served linear step (activation
quantization + GEMM, decode M so split-K runs) and the fused MoE (align, activation
quantization, both grouped GEMMs, SiLU*mul quantization, combine). Two compiles per layout."""

import pytest
import torch

from ds_plugin.kernels import int8_fused_moe, int8_linear
from ds_plugin.kernels.ref_int8 import random_int8_weight
from tests.kernels.test_compile_safety import _check

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="torch.compile lowers Triton kernels for a GPU; the CPU interpreter cannot be compiled")
LAYOUTS = pytest.mark.parametrize("blockwise", [False, True], ids=["channel", "block"])


@LAYOUTS
def test_int8_linear(blockwise):
    g = torch.Generator(device="cuda").manual_seed(1)
    w, w_s = random_int8_weight((2112, 7168), "cuda", blockwise, g)
    x = torch.randn(1, 7168, device="cuda", dtype=torch.bfloat16)
    _check(lambda x, w, w_s: int8_linear(x, w, w_s), (x, w, w_s))


@LAYOUTS
def test_int8_fused_moe(blockwise, m=6, e=8, k=2, h=512, inter=256):
    g = torch.Generator(device="cuda").manual_seed(3)
    w13, w13_s = random_int8_weight((e, 2 * inter, h), "cuda", blockwise, g)
    w2, w2_s = random_int8_weight((e, h, inter), "cuda", blockwise, g)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=g)
    weights, ids = torch.randn(m, e, device="cuda", generator=g).softmax(-1).topk(k)
    _check(lambda *a: int8_fused_moe(*a), (x, weights, ids, w13, w13_s, w2, w2_s))
