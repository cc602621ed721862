"""Formats vLLM implements (AWQ, ModelOpt NVFP4, Quark MXFP4) on ds_plugin's model classes.

vLLM's CPU build here runs none of them end to end (AWQ's MoE backends need AMX or CUDA, the
AWQ linear kernel is not in the AVX2 build, NVFP4 and MXFP4 need a GPU), so these are load
proofs: our DeepseekV3ForCausalLM is built with vLLM's own quant method on every layer, every
tensor of a tiny checkpoint in the format is loaded by its release name through our loader,
and the loaded parameters hold the checkpoint's bytes where the fused/stacked layout puts them.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from ds_plugin.testing.checkpoint import TinyConfig, read_state_dict  # noqa: E402
from ds_plugin.testing.foreign_formats import FORMATS, write_foreign_checkpoint  # noqa: E402
from tests.helpers.vllm_probe import stand_in_gpu_backends  # noqa: E402

# Per format: (vLLM's resolved method name, linear method class, MoE method class).
METHODS = {
    "awq": ("awq", "AutoAWQMarlinLinearMethod", "AutoAWQMoEMethod"),
    "nvfp4": ("modelopt_fp4", "ModelOptLinearMethod", "ModelOptNvFp4FusedMoE"),
    "mxfp4": ("quark", "QuarkLinearMethod", "QuarkOCP_MX_MoEMethod"),
}
# The checkpoint suffix of the packed weight in each format (vLLM's parameter name too).
WEIGHT = {"awq": "qweight", "nvfp4": "weight", "mxfp4": "weight"}


def _build(path):
    from ds_plugin.model.deepseek_v3 import DeepseekV3ForCausalLM
    from tests.helpers.vllm_api import EngineArgs, set_current_vllm_config
    from tests.helpers.vllm_probe import single_rank_context

    cfg = EngineArgs(model=str(path), skip_tokenizer_init=True, enforce_eager=True,
                     max_model_len=512, gpu_memory_utilization=0.15).create_engine_config()
    with single_rank_context(), set_current_vllm_config(cfg):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return cfg.model_config.quantization, DeepseekV3ForCausalLM(vllm_config=cfg)
        finally:
            torch.set_default_dtype(default)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("foreign")
    return {f: write_foreign_checkpoint(d / f, f, TinyConfig(n_shards=1)) for f in FORMATS}


def _quant_method_names(model) -> dict[str, str]:
    return {name: type(mod.quant_method).__name__ for name, mod in model.named_modules()
            if getattr(mod, "quant_method", None) is not None}


@pytest.mark.parametrize("fmt", FORMATS)
def test_model_builds_every_layer_with_the_format_and_loads_every_tensor(ckpts, fmt,
                                                                        monkeypatch):
    stand_in_gpu_backends(monkeypatch)
    import ds_plugin

    ds_plugin.register()  # our model and quant configs, as an engine process has them
    quant, model = _build(ckpts[fmt])
    want_quant, linear_cls, moe_cls = METHODS[fmt]
    assert quant == want_quant
    methods = _quant_method_names(model)
    linears = {n: m for n, m in methods.items() if n.endswith("_proj")}
    assert linears and set(linears.values()) == {linear_cls}, linears
    assert {m for n, m in methods.items() if n.endswith("routed_experts")} == {moe_cls}
    assert all(m == "UnquantizedLinearMethod" for n, m in methods.items()
               if n.endswith("mlp.gate")), methods

    sd = read_state_dict(ckpts[fmt], dequantize=False)
    params = dict(model.named_parameters())
    loaded = model.load_weights(iter(sd.items()))
    # Every parameter that is not an optional attention scale came from the checkpoint.
    assert set(params) - loaded <= {n for n in params if n.endswith("_scale") and ".attn." in n}

    w = WEIGHT[fmt]
    cfg = model.cfg
    a = "model.layers.1.self_attn."
    fused = params[f"{a}fused_qkv_a_proj.{w}"]
    q_part, kv_part = sd[f"{a}q_a_proj.{w}"], sd[f"{a}kv_a_proj_with_mqa.{w}"]
    cat_dim = 1 if fmt == "awq" else 0  # AWQ stores (K, N/8): output columns on dim 1
    assert torch.equal(fused, torch.cat([q_part, kv_part], dim=cat_dim))
    m = "model.layers.1.mlp."
    experts = f"{m}experts.routed_experts."
    w13, w2 = params[f"{experts}w13_{w}"], params[f"{experts}w2_{w}"]
    for e in (0, cfg.n_routed_experts - 1):
        gate, up = sd[f"{m}experts.{e}.gate_proj.{w}"], sd[f"{m}experts.{e}.up_proj.{w}"]
        assert torch.equal(w13[e], torch.cat([gate, up], dim=cat_dim)), e
        assert torch.equal(w2[e], sd[f"{m}experts.{e}.down_proj.{w}"]), e
    # The MTP layer's tensors were in the checkpoint and are not the target model's.
    assert any(n.startswith(f"model.layers.{cfg.num_hidden_layers}.") for n in sd)


def test_a_misshaped_foreign_tensor_is_named(ckpts, monkeypatch):
    stand_in_gpu_backends(monkeypatch)
    _, model = _build(ckpts["awq"])
    sd = read_state_dict(ckpts["awq"], dequantize=False)
    victim = "model.layers.1.mlp.experts.2.down_proj.qweight"
    sd[victim] = torch.cat([sd[victim], sd[victim][:1]])
    with pytest.raises(ValueError, match=victim.replace(".", r"\.")):
        model.load_weights(iter(sd.items()))
