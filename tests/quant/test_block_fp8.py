"""ds_fp8 config and linear method on CPU, with real vLLM layer objects.

The CPU path promises: the checkpoint's fp8 weight is dequantized to the model dtype once
at load, then F.linear. So apply() must equal F.linear with the reference-dequantized
weight bitwise, and the fp32 product within the bound bf16 weight rounding implies.
"""

import pytest
import torch


pytest.importorskip("vllm")

from tests.helpers.vllm_probe import (linear_layers, registered_quantization_config,
                                      single_rank_context)
from ds_plugin.kernels.fp8_format import dequant_block, quant_block
from ds_plugin.quant.block_fp8 import DequantizedLinear, DSBlockFp8Config, DSBlockFp8LinearMethod

CKPT_CFG = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic",
            "fmt": "e4m3"}


@pytest.fixture(scope="module")
def vllm_ctx():
    with single_rank_context():
        yield linear_layers()


def test_claims_deepseek_block_fp8_checkpoints():
    claim = DSBlockFp8Config.override_quantization_method
    assert claim(CKPT_CFG, None) == "ds_fp8"
    assert claim(CKPT_CFG, "ds_fp8") == "ds_fp8"
    assert claim({"quant_method": "awq"}, "ds_fp8") == "ds_fp8"  # MTP draft inherits the name
    assert claim(CKPT_CFG, "fp8") is None  # the user asked for vLLM's own fp8
    assert claim({**CKPT_CFG, "weight_block_size": [64, 64]}, None) is None
    assert claim({"quant_method": "fp8"}, None) is None  # per-tensor fp8 is not ours
    # Only DeepSeek-V3-family configs are claimed unasked; other models keep vLLM's Fp8.
    from types import SimpleNamespace as NS

    for mt in ("deepseek_v3", "deepseek_mtp"):
        assert claim(CKPT_CFG, None, hf_config=NS(model_type=mt)) == "ds_fp8"
    assert claim(CKPT_CFG, None, hf_config=NS(model_type="qwen3_moe")) is None
    assert claim(CKPT_CFG, "ds_fp8", hf_config=NS(model_type="qwen3_moe")) == "ds_fp8"


def test_config_rejects_other_formats():
    with pytest.raises(ValueError, match="weight_block_size"):
        DSBlockFp8Config.from_config({**CKPT_CFG, "weight_block_size": [128, 64]})
    with pytest.raises(ValueError, match="activation_scheme"):
        DSBlockFp8Config.from_config({**CKPT_CFG, "activation_scheme": "static"})


def test_register_makes_vllm_resolve_our_config():
    import ds_plugin

    ds_plugin.register()
    ds_plugin.register()  # idempotent
    assert registered_quantization_config("ds_fp8") is DSBlockFp8Config


def _load(layer, name, tensor, *shard):
    param = getattr(layer, name)
    param.weight_loader(param, tensor, *shard)


def _merged(layers, k, parts, seed=0, prefix="model.layers.0.mlp.gate_up_proj"):
    cfg = DSBlockFp8Config.from_config(CKPT_CFG)
    layer = layers.MergedColumnParallelLinear(k, parts, bias=False, quant_config=cfg, prefix=prefix,
                                              params_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(n, k, generator=g) * 0.05 for n in parts]
    qs = [quant_block(w) for w in ws]
    return layer, qs


def test_linear_apply_matches_dequantized_reference(vllm_ctx):
    layer, qs = _merged(vllm_ctx, 576, [256, 384])
    assert isinstance(layer.quant_method, DSBlockFp8LinearMethod)
    for i, (q, s) in enumerate(qs):
        _load(layer, "weight", q, i)
        _load(layer, "weight_scale_inv", s, i)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_fp8, DequantizedLinear)
    w_ref = torch.cat([dequant_block(q, s) for q, s in qs])  # (640, 576) fp32
    x = torch.randn(5, 576).to(torch.bfloat16)
    out = layer.quant_method.apply(layer, x)
    assert torch.equal(out, torch.nn.functional.linear(x, w_ref.to(torch.bfloat16)))
    ref = x.float() @ w_ref.t()
    # Rounding each weight to bf16 moves it by <= 2**-9 relative, so the sum moves by at
    # most 2**-9 * sum |x||w|; the output's own rounding adds one bf16 ulp (2**-7).
    tol = (x.float().abs() @ w_ref.abs().t()) * 2 ** -9 + ref.abs() * 2 ** -7
    assert ((out.float() - ref).abs() <= tol).all()


def test_row_parallel_with_partial_blocks(vllm_ctx):
    cfg = DSBlockFp8Config.from_config(CKPT_CFG)
    layer = vllm_ctx.RowParallelLinear(300, 200, bias=False, quant_config=cfg,
                                       prefix="model.layers.0.self_attn.o_proj",
                                       params_dtype=torch.bfloat16)
    q, s = quant_block(torch.randn(200, 300) * 0.05)
    assert layer.weight_scale_inv.shape == (2, 3)
    _load(layer, "weight", q)
    _load(layer, "weight_scale_inv", s)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(3, 300).to(torch.bfloat16)
    w = dequant_block(q, s).to(torch.bfloat16)
    assert torch.equal(layer.quant_method.apply(layer, x), torch.nn.functional.linear(x, w))
    # vLLM's MLA recovers kv_b_proj's weight as apply(fp32 identity).T: exact here.
    assert torch.equal(layer.quant_method.apply(layer, torch.eye(300)).t(), w.float())


def test_missing_scale_fails_at_load_naming_it(vllm_ctx):
    layer, qs = _merged(vllm_ctx, 256, [128, 128], prefix="model.layers.3.mlp.gate_up_proj")
    for i, (q, s) in enumerate(qs):
        _load(layer, "weight", q, i)
    _load(layer, "weight_scale_inv", qs[0][1], 0)  # the up shard's scales never arrive
    with pytest.raises(ValueError, match=r"model\.layers\.3\.mlp\.gate_up_proj\.weight_scale_inv: missing"):
        layer.quant_method.process_weights_after_loading(layer)


def test_wrong_scale_shape_fails_naming_it(vllm_ctx):
    layer, qs = _merged(vllm_ctx, 256, [128, 128], prefix="model.layers.1.mlp.gate_up_proj")
    with pytest.raises(ValueError, match=r"gate_up_proj\.weight_scale_inv: checkpoint tensor has shape \(2, 2\) \(shard 0\), expected \(1, 2\)"):
        _load(layer, "weight_scale_inv", torch.ones(2, 2), 0)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float16, torch.float8_e4m3fn])
def test_scale_of_another_dtype_fails_naming_it(vllm_ctx, dtype):
    # The loader's copy_ would convert it into the fp32 parameter without a word.
    layer, qs = _merged(vllm_ctx, 256, [128, 128], prefix="model.layers.2.mlp.gate_up_proj")
    bad = torch.ones(1, 2, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"gate_up_proj\.weight_scale_inv: checkpoint tensor "
                                         rf"has dtype {name}, expected float32"):
        _load(layer, "weight_scale_inv", bad, 0)


def test_weight_must_be_fp8_e4m3(vllm_ctx):
    layer, qs = _merged(vllm_ctx, 256, [128, 128], prefix="model.layers.2.mlp.gate_up_proj")
    with pytest.raises(ValueError, match=r"gate_up_proj\.weight: checkpoint tensor has dtype "
                                         r"bfloat16, expected float8_e4m3fn"):
        _load(layer, "weight", qs[0][0].to(torch.bfloat16), 0)


def test_bf16_scales_are_upcast_exactly(vllm_ctx, caplog):
    layer, qs = _merged(vllm_ctx, 256, [128, 128])
    for i, (q, s) in enumerate(qs):
        _load(layer, "weight", q, i)
        _load(layer, "weight_scale_inv", s.to(torch.bfloat16), i)
    assert layer.weight_scale_inv.dtype == torch.float32
    assert torch.equal(layer.weight_scale_inv.data,
                       torch.cat([s.to(torch.bfloat16).float() for _, s in qs]))
    assert any("upcast to float32" in m for m in layer.quant_method.config.paths_logged)


def test_nonpositive_scale_rejected(vllm_ctx):
    layer, qs = _merged(vllm_ctx, 256, [128, 128])
    for i, (q, s) in enumerate(qs):
        _load(layer, "weight", q, i)
        _load(layer, "weight_scale_inv", -s if i else s, i)
    with pytest.raises(ValueError, match="finite and positive"):
        layer.quant_method.process_weights_after_loading(layer)


def test_merged_shards_must_be_whole_blocks(vllm_ctx):
    with pytest.raises(ValueError, match="all but the last must be multiples of 128"):
        _merged(vllm_ctx, 256, [100, 128])
    _merged(vllm_ctx, 256, [128, 100])  # a partial last shard is fine (q_a + kv_a: 1536 + 576)


def test_triton_on_cpu_picks_the_cuda_side_class(vllm_ctx, monkeypatch):
    # What an engine gets with DS_PLUGIN_TRITON_ON_CPU=1 under the interpreter: the fp8 weight
    # stays fp8 and each call runs our Triton GEMM (torch's blockwise path needs CUDA).
    from ds_plugin.kernels.fp8_format import quant_groups
    from ds_plugin.kernels.ref_fp8 import ref_block_gemm_nt
    from ds_plugin.quant.block_fp8 import Fp8Linear

    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    layer, qs = _merged(vllm_ctx, 384, [128, 200])
    for i, (q, s) in enumerate(qs):
        _load(layer, "weight", q, i)
        _load(layer, "weight_scale_inv", s, i)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_fp8, Fp8Linear) and not layer.ds_fp8.torch_ok
    assert layer.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(2, 3, 384).to(torch.bfloat16)
    y = layer.quant_method.apply(layer, x)
    ref = ref_block_gemm_nt(*quant_groups(x.reshape(6, 384)), layer.weight, layer.weight_scale_inv)
    ref = ref.float().view(2, 3, 328)
    assert ((y.float() - ref).abs() <= ref.abs() * 2 ** -7 + ref.abs().max() * 2 ** -12).all()


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    from ds_plugin import envs

    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        envs.use_triton(torch.device("cpu"))
