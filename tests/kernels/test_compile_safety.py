"""Every kernel entry point survives what vLLM does to it: torch.compile and CUDA-graph replay.

For each public entry point of `ds_plugin.kernels`: `torch.compile(fullgraph=True)` (Inductor
lowers the user-defined Triton kernels itself) gives 0 graph breaks and an output bitwise equal
to eager; then the compiled call is captured in a `torch.cuda.CUDAGraph` and the replay is
bitwise equal too. One shape per entry point (each compile costs GPU time), small but real
(DeepSeek-V3 widths where the kernel specialises on them). `mla_decode` is compiled both with a
fixed config (bitwise vs eager: the same kernel) and autotuned (Inductor autotunes on its own, so
its pick may differ from eager's: compared within the kernel tests' bf16 tolerance).
"""

import pytest
import torch

from ds_plugin.kernels import (fp8_act_quant, fp8_block_gemm_nt, fp8_fused_moe, fp8_grouped_gemm_nt,
                               fp8_silu_mul_quant, mla_decode, mla_kv_cache_write, moe_align)
from ds_plugin.kernels.ref_fp8 import random_fp8_weight

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not CUDA, reason="torch.compile lowers Triton kernels for a GPU; the CPU interpreter cannot be compiled")


def _equal(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _equal(x, y)
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    # Bitwise, NaN included (fp8 / ints compared as raw bytes).
    assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _clone(x):
    return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in x)


def _compiled_and_captured(fn, args):
    """(eager, compiled, replayed) outputs of fn(*args); asserts no graph break."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    eager = fn(*_clone(args))
    compiled_fn = torch.compile(fn, fullgraph=True)
    compiled = compiled_fn(*_clone(args))
    assert not counters["graph_break"], dict(counters["graph_break"])
    static = _clone(args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        compiled_fn(*static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = compiled_fn(*static)
    # In-place entry points wrote into their arguments during the warm-up: restore, then replay.
    for s, s0 in zip(static, args):
        if isinstance(s, torch.Tensor):
            s.copy_(s0)
    graph.replay()
    torch.cuda.synchronize()
    return eager, compiled, captured


def _check(fn, args):
    eager, compiled, replayed = _compiled_and_captured(fn, args)
    _equal(compiled, eager)
    _equal(replayed, eager)


def test_fp8_act_quant():
    x = torch.randn(5, 7168, device="cuda", dtype=torch.bfloat16)
    _check(lambda x: fp8_act_quant(x), (x,))


def test_fp8_silu_mul_quant():
    x = torch.randn(9, 2 * 2048, device="cuda", dtype=torch.bfloat16)
    _check(lambda x: fp8_silu_mul_quant(x), (x,))


def test_fp8_block_gemm_nt():
    # Decode-sized M: the split-K path, so both of its kernels (GEMM and the split sum).
    g = torch.Generator(device="cuda").manual_seed(1)
    w, w_s = random_fp8_weight((2112, 7168), "cuda", g)
    x = torch.randn(1, 7168, device="cuda", dtype=torch.bfloat16)

    def step(x, w, w_s):
        a, a_s = fp8_act_quant(x)
        return fp8_block_gemm_nt(a, a_s, w, w_s)
    _check(step, (x, w, w_s))


def _moe_inputs(m=6, e=8, k=2, h=512, inter=256):
    g = torch.Generator(device="cuda").manual_seed(3)
    w13, w13_s = random_fp8_weight((e, 2 * inter, h), "cuda", g)
    w2, w2_s = random_fp8_weight((e, h, inter), "cuda", g)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=g)
    weights, ids = torch.randn(m, e, device="cuda", generator=g).softmax(-1).topk(k)
    return x, weights, ids, w13, w13_s, w2, w2_s


def test_moe_align():
    _, _, ids, *_ = _moe_inputs()
    _check(lambda ids: moe_align(ids, 8, 16), (ids,))


def test_fp8_grouped_gemm_nt():
    x, weights, ids, w13, w13_s, *_ = _moe_inputs()

    def step(x, ids, w13, w13_s):
        sorted_ids, block_expert = moe_align(ids, w13.shape[0], 16)
        a, a_s = fp8_act_quant(x)
        return fp8_grouped_gemm_nt(a, a_s, w13, w13_s, sorted_ids, block_expert,
                                   ids.numel(), ids.shape[1])
    _check(step, (x, ids, w13, w13_s))


def test_fp8_fused_moe():
    args = _moe_inputs()
    _check(lambda *a: fp8_fused_moe(*a), args)


def test_mla_kv_cache_write():
    # The fp8 cache (vLLM's uint8 storage): the quantising write, a superset of the bf16 copy.
    g = torch.Generator(device="cuda").manual_seed(1)
    kv_c = torch.randn(5, 512, device="cuda", dtype=torch.bfloat16, generator=g)
    k_pe = torch.randn(5, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    cache = torch.zeros(4, 64, 576, device="cuda", dtype=torch.uint8)
    slots = torch.tensor([3, 70, -1, 255, 128], device="cuda")
    scale = torch.tensor([0.05], device="cuda")

    def step(kv_c, k_pe, cache, slots):
        mla_kv_cache_write(kv_c, k_pe, cache, slots, scale)
        return cache
    _check(step, (kv_c, k_pe, cache, slots))


def _mla_inputs(fp8, heads=16, seq_lens=(1, 300, 1000)):
    g = torch.Generator(device="cuda").manual_seed(2)
    pages = 20
    cache = torch.randn(3 * pages, 64, 576, device="cuda", generator=g).to(torch.bfloat16)
    k_scale = None
    if fp8:
        k_scale = torch.tensor([0.01], device="cuda")
        cache = (cache.float() / k_scale).to(torch.float8_e4m3fn)
    table = torch.randperm(3 * pages, device="cuda", generator=g).view(3, pages).int()
    seq = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    q = torch.randn(3, 1, heads, 576, device="cuda", generator=g).to(torch.bfloat16)
    return q, cache, table, seq, k_scale


def test_mla_decode_fixed_config():
    # The fp8 tile path of the benchmark's opt-in column (int32 words, inline-PTX converter),
    # split so that the merge kernel runs too.
    q, cache, table, seq, k_scale = _mla_inputs(True)
    cfg = {"BLOCK_H": 16, "BLOCK_N": 64, "num_warps": 8, "num_stages": 5, "PAGED_TILE": True, "FP8_CVT": 4}

    def step(q, cache, table, seq):
        # A Python-float scale: Inductor once typed it fp64 and the softmax loop failed to build.
        return mla_decode(q, cache, table, seq, 576**-0.5, 512, k_scale=k_scale, num_splits=4,
                          config=cfg)
    _check(step, (q, cache, table, seq))


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_mla_decode_autotuned(fp8):
    # What vLLM runs: the autotune space of each cache dtype.
    q, cache, table, seq, k_scale = _mla_inputs(fp8)

    def step(q, cache, table, seq):
        return mla_decode(q, cache, table, seq, 576**-0.5, 512, k_scale=k_scale, num_splits=2)
    eager, compiled, replayed = _compiled_and_captured(step, (q, cache, table, seq))
    _equal(replayed, compiled)
    out, ref = compiled[0].float(), eager[0].float()
    assert ((out - ref).abs() <= 2 / 128 * ref.abs() + 2 / 128).all()
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
