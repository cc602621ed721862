"""The checkpoint loader on a real, in-process DeepseekV3ForCausalLM (TP=1, no engine).

Release names land in the fused/stacked vLLM parameters bit for bit, the MTP layer is
skipped, and a missing, unexpected or mis-shaped tensor stops the load with its name.
"""

from __future__ import annotations

import pytest
import torch

from ds_plugin.testing.checkpoint import read_state_dict
from tests.model import checkpoints


def _build(path, with_config: bool = False):
    from ds_plugin.model.deepseek_v3 import DeepseekV3ForCausalLM
    from tests.helpers.vllm_api import EngineArgs, set_current_vllm_config
    from tests.helpers.vllm_probe import single_rank_context

    cfg = EngineArgs(model=str(path), skip_tokenizer_init=True, enforce_eager=True,
                     max_model_len=512, gpu_memory_utilization=0.15).create_engine_config()
    with single_rank_context(), set_current_vllm_config(cfg):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = DeepseekV3ForCausalLM(vllm_config=cfg)
            return (model, cfg) if with_config else model
        finally:
            torch.set_default_dtype(default)


@pytest.fixture(scope="module")
def bf16(tmp_path_factory):
    path = checkpoints.make(tmp_path_factory.mktemp("weights"), "yarn")
    return path, read_state_dict(path, dequantize=False)


def _load(path, tensors: dict[str, torch.Tensor]):
    model = _build(path)
    model.load_weights(iter(tensors.items()))
    return model


def test_release_names_land_bitwise(bf16):
    path, sd = bf16
    model = _load(path, sd)
    p = dict(model.named_parameters())
    a = "model.layers.1.self_attn."
    q_rank = model.cfg.q_lora_rank
    fused = p[a + "fused_qkv_a_proj.weight"]
    assert torch.equal(fused[:q_rank], sd[a + "q_a_proj.weight"])
    assert torch.equal(fused[q_rank:], sd[a + "kv_a_proj_with_mqa.weight"])
    assert torch.equal(p[a + "kv_b_proj.weight"], sd[a + "kv_b_proj.weight"])
    m = "model.layers.1.mlp."
    inter = model.cfg.moe_intermediate_size
    for e in (0, 7, 15):
        w13 = p[m + "experts.routed_experts.w13_weight"][e]
        assert torch.equal(w13[:inter], sd[f"{m}experts.{e}.gate_proj.weight"])
        assert torch.equal(w13[inter:], sd[f"{m}experts.{e}.up_proj.weight"])
        assert torch.equal(p[m + "experts.routed_experts.w2_weight"][e],
                           sd[f"{m}experts.{e}.down_proj.weight"])
    bias = p[m + "gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32 and torch.equal(bias, sd[m + "gate.e_score_correction_bias"])
    dense = p["model.layers.0.mlp.gate_up_proj.weight"]
    assert torch.equal(dense[:model.cfg.intermediate_size], sd["model.layers.0.mlp.gate_proj.weight"])
    # The MTP layer (index num_hidden_layers) was in the checkpoint and is not in the model.
    assert any(n.startswith("model.layers.2.") for n in sd)
    assert not any(n.startswith("model.layers.2.") for n in p)


@pytest.mark.parametrize("victim", ["model.layers.1.mlp.experts.3.up_proj.weight",
                                    "model.layers.0.self_attn.q_a_proj.weight",
                                    "model.layers.1.mlp.gate.e_score_correction_bias"])
def test_missing_tensor_named(bf16, victim):
    path, sd = bf16
    with pytest.raises(ValueError, match=f"lacks 1 tensor.*{victim}"):
        _load(path, {k: v for k, v in sd.items() if k != victim})


@pytest.mark.parametrize("victim", ["model.layers.0.self_attn.q_b_proj.weight",
                                    "model.layers.1.mlp.experts.5.down_proj.weight",
                                    "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"])
def test_misshaped_tensor_named(bf16, victim):
    path, sd = bf16
    bad = dict(sd)
    # One extra output row: the kind of error a narrow-by-rank loader would not notice.
    bad[victim] = torch.cat([sd[victim], sd[victim][:1]])
    with pytest.raises(ValueError, match=f"{victim}.*has shape"):
        _load(path, bad)


def test_unexpected_tensor_named(bf16):
    path, sd = bf16
    name = "model.layers.0.self_attn.q_proj.weight"  # q LoRA model: no plain q_proj
    with pytest.raises(ValueError, match=f"{name}.*no place"):
        _load(path, {**sd, name: torch.zeros(512, 256, dtype=torch.bfloat16)})


def test_config_json_without_kv_lora_rank_is_refused_naming_it(tmp_path):
    # Through vLLM's own config loading: transformers fills kv_lora_rank=512 in, so only
    # the raw config.json shows it was never stated.
    import json

    path = checkpoints.make(tmp_path, "yarn")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["kv_lora_rank"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json does not state kv_lora_rank"):
        _build(path)


def _truncate(path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])


@pytest.mark.parametrize("keep", [-1000, 5, 100], ids=["data", "length", "header"])
def test_truncated_safetensors_file_is_named(tmp_path, keep):
    from ds_plugin.patches.weights import check_safetensors_file
    from safetensors.torch import save_file

    f = tmp_path / "model-00001-of-00002.safetensors"
    save_file({"a": torch.zeros(64, 64), "b": torch.ones(3)}, str(f))
    check_safetensors_file(f)
    _truncate(f, keep)
    with pytest.raises(ValueError, match=f"{f}: truncated safetensors file"):
        check_safetensors_file(f)


def test_truncated_shard_is_named_by_vllms_loader(tmp_path):
    # The engine's own load path (vLLM's DefaultModelLoader with the plugin registered):
    # safetensors alone says "incomplete metadata, file not fully covered", no file.
    import ds_plugin
    from tests.helpers.vllm_api import get_model_loader, set_current_vllm_config

    ds_plugin.register()
    path = checkpoints.make(tmp_path, "yarn")
    shard = sorted(path.glob("*.safetensors"))[-1]
    _truncate(shard, -4096)
    model, cfg = _build(path, with_config=True)
    with set_current_vllm_config(cfg), pytest.raises(
            ValueError, match=f"{shard}: truncated safetensors file"):
        get_model_loader(cfg.load_config).load_weights(model, cfg.model_config)


@pytest.mark.parametrize("suffix, dtype, want", [
    ("experts.3.down_proj.weight_scale_inv", torch.int32, "float32"),
    ("experts.3.gate_proj.weight", torch.bfloat16, "float8_e4m3fn"),
    ("shared_experts.up_proj.weight_scale_inv", torch.float16, "float32"),
])
def test_fp8_tensor_of_another_dtype_is_named(tmp_path, suffix, dtype, want):
    # Routed experts (the MoE method's loader) and a linear layer: vLLM's loaders would
    # copy_ the tensor into the parameter, converting it without a word.
    path = checkpoints.make(tmp_path, "yarn", "fp8")
    sd = read_state_dict(path, dequantize=False)
    name = f"model.layers.1.mlp.{suffix}"
    bad = sd[name].to(dtype) if dtype != torch.int32 else sd[name].round().to(dtype)
    got = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=rf"{name}.*checkpoint tensor has dtype {got}, "
                                         rf"expected {want}"):
        _load(path, {**sd, name: bad})


def test_fp8_scales_land_bitwise_in_fp32(tmp_path):
    # The model is built under bf16 as default dtype (as vLLM does); a scale parameter
    # created without a dtype would round every fp32 checkpoint scale to bf16.
    path = checkpoints.make(tmp_path, "yarn", "fp8")
    sd = read_state_dict(path, dequantize=False)
    model = _build(path)
    model.load_weights(iter(sd.items()))
    p = dict(model.named_parameters())
    m = "model.layers.1.mlp."
    inter = model.cfg.moe_intermediate_size
    w13_s = p[m + "experts.routed_experts.w13_weight_scale_inv"]
    w2_s = p[m + "experts.routed_experts.w2_weight_scale_inv"]
    assert w13_s.dtype == w2_s.dtype == torch.float32
    rows = -(-inter // 128)
    for e in (0, 5):
        assert torch.equal(w13_s[e, :rows], sd[f"{m}experts.{e}.gate_proj.weight_scale_inv"])
        assert torch.equal(w13_s[e, rows:], sd[f"{m}experts.{e}.up_proj.weight_scale_inv"])
        assert torch.equal(w2_s[e], sd[f"{m}experts.{e}.down_proj.weight_scale_inv"])
