"""The tiny-checkpoint generator writes the real DeepSeek release format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ds_plugin.kernels.fp8_format import BLOCK
from ds_plugin.testing.checkpoint import (TinyConfig, checkpoint_tensors, read_state_dict,
                                          tensor_specs, write_checkpoint)

# Fields every V3/R1/V3.1 config.json carries that DeepSeek model code reads.
RELEASE_FIELDS = {
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
    "moe_intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "n_shared_experts", "n_routed_experts", "routed_scaling_factor", "kv_lora_rank",
    "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "topk_method",
    "n_group", "topk_group", "num_experts_per_tok", "moe_layer_freq", "first_k_dense_replace",
    "norm_topk_prob", "scoring_func", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "rope_theta", "rope_scaling", "num_nextn_predict_layers", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "torch_dtype",
}


def _stored(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    index = json.loads((path / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(path / shard), "pt") as f:
            for k in f.keys():
                assert index["weight_map"][k] == shard, k
                t = f.get_slice(k)
                out[k] = (t.get_dtype(), tuple(t.get_shape()))
    assert set(out) == set(index["weight_map"])
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    cfg = TinyConfig(num_hidden_layers=2)
    return cfg, write_checkpoint(d / "bf16", cfg), write_checkpoint(d / "fp8", cfg, quant="fp8")


def test_config_json_has_release_fields(ckpts):
    cfg, bf16, fp8 = ckpts
    c = json.loads((bf16 / "config.json").read_text())
    assert RELEASE_FIELDS <= set(c), RELEASE_FIELDS - set(c)
    assert c["model_type"] == "deepseek_v3" and c["architectures"] == ["DeepseekV3ForCausalLM"]
    assert c["topk_method"] == "noaux_tc" and c["scoring_func"] == "sigmoid"
    assert c["rope_scaling"]["type"] == "yarn" and c["rope_scaling"]["factor"] == 40
    assert "quantization_config" not in c
    q = json.loads((fp8 / "config.json").read_text())["quantization_config"]
    assert q == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                 "weight_block_size": [128, 128]}


def test_release_tensor_names_and_mtp_layer(ckpts):
    cfg, bf16, _ = ckpts
    names = set(_stored(bf16))
    L = cfg.num_hidden_layers
    for must in ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias",
                 "model.layers.1.mlp.experts.7.down_proj.weight",
                 "model.layers.1.mlp.shared_experts.up_proj.weight",
                 "model.layers.0.self_attn.q_a_proj.weight",
                 "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                 f"model.layers.{L}.enorm.weight", f"model.layers.{L}.hnorm.weight",
                 f"model.layers.{L}.eh_proj.weight", f"model.layers.{L}.shared_head.head.weight",
                 f"model.layers.{L}.shared_head.norm.weight", f"model.layers.{L}.embed_tokens.weight",
                 f"model.layers.{L}.mlp.experts.0.gate_proj.weight"]:
        assert must in names, must
    assert not any(n.startswith(f"model.layers.{L + 1}.") for n in names)


def test_fp8_layout_matches_release(ckpts):
    cfg, bf16, fp8 = ckpts
    plain, quant = _stored(bf16), _stored(fp8)
    kinds = {n: k for n, _, k in tensor_specs(cfg)}
    for name, (dtype, shape) in plain.items():
        if kinds[name] == "linear":
            assert quant[name] == ("F8_E4M3", shape), name
            sname = name.removesuffix("weight") + "weight_scale_inv"
            want = (-(-shape[0] // BLOCK), -(-shape[1] // BLOCK))
            assert quant[sname] == ("F32", want), sname
        else:
            # norms, router, bias, embeddings, heads and eh_proj stay unquantised
            assert quant[name] == (dtype, shape), name
            assert name.removesuffix("weight") + "weight_scale_inv" not in quant
    assert plain["model.layers.1.mlp.gate.e_score_correction_bias"][0] == "F32"
    assert plain["model.layers.1.mlp.gate.weight"][0] == "BF16"
    # kv_a_proj_with_mqa is 576 rows: a partial last block, as in the release
    assert quant["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"][1] == (5, 2)


def test_deterministic_from_seed():
    cfg = TinyConfig(vocab_size=129280, num_hidden_layers=1, first_k_dense_replace=0,
                     num_nextn_predict_layers=0)

    def digest(seed):
        h = hashlib.sha256()
        for k, v in checkpoint_tensors(cfg, "fp8", seed).items():
            h.update(k.encode())
            h.update(v.contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    assert digest(3) == digest(3)
    assert digest(3) != digest(4)


def test_read_state_dict_dequantizes_fp8_close_to_bf16(ckpts):
    _, bf16, fp8 = ckpts
    a, b = read_state_dict(bf16), read_state_dict(fp8)
    assert set(a) == set(b)
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    rel = (a[name] - b[name]).norm() / a[name].norm()
    assert rel < 0.04  # e4m3 quantisation noise, ~2^-5 relative


def test_bf16_twin_of_fp8_holds_what_ds_fp8_computes_on_cpu(tmp_path):
    # Bit for bit the weights ds_fp8's CPU path makes at load (fp8_block_dequant to bf16),
    # every other tensor as in the fp8 checkpoint, and no quantization_config: the session
    # server (the twin) and the FP8 server must give the same greedy tokens.
    from ds_plugin.kernels import fp8_block_dequant
    from ds_plugin.testing.checkpoint import write_bf16_twin

    src = write_checkpoint(tmp_path / "fp8", TinyConfig(num_hidden_layers=2), quant="fp8")
    twin_dir = write_bf16_twin(src, tmp_path / "twin")
    fp8, twin = read_state_dict(src, dequantize=False), read_state_dict(twin_dir, dequantize=False)
    assert set(twin) == {k for k in fp8 if not k.endswith("_scale_inv")}
    for name, t in twin.items():
        if fp8[name].dtype == torch.float8_e4m3fn:
            want = fp8_block_dequant(fp8[name], fp8[name.removesuffix("weight") + "weight_scale_inv"],
                                     torch.bfloat16)
            assert t.dtype == torch.bfloat16 and torch.equal(t, want), name
        else:
            assert t.dtype == fp8[name].dtype and torch.equal(t, fp8[name]), name
    assert "quantization_config" not in json.loads((twin_dir / "config.json").read_text())


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="n_group"):
        TinyConfig(n_routed_experts=6, n_group=4)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyConfig(vocab_size=1000)
    with pytest.raises(ValueError, match="quant"):
        TinyConfig().hf_config(quant="int4")


def test_tokenizer_and_chat_template_shipped(ckpts):
    _, bf16, _ = ckpts
    tc = json.loads((bf16 / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "LlamaTokenizerFast"
    assert "<｜Assistant｜>" in tc["chat_template"]
    assert (bf16 / "tokenizer.json").stat().st_size > 1_000_000


def test_loads_in_hf_transformers_with_the_same_names(ckpts):
    transformers = pytest.importorskip("transformers")
    cfg, bf16, _ = ckpts
    model, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        bf16, torch_dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info["missing_keys"]
    # HF has no MTP module: exactly the MTP layer's tensors are left over.
    L = cfg.num_hidden_layers
    assert info["unexpected_keys"], "the MTP layer should be present in the checkpoint"
    assert all(k.startswith(f"model.layers.{L}.") for k in info["unexpected_keys"])
    sd = read_state_dict(bf16)
    hf = model.state_dict()
    for name in ["lm_head.weight", "model.layers.0.self_attn.kv_b_proj.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias"]:
        assert torch.equal(hf[name], sd[name]), name
    # transformers 5 fuses per-expert tensors at load: [E, 2I, H] gate|up and [E, H, I] down.
    gate_up = hf["model.layers.1.mlp.experts.gate_up_proj"][5]
    inter = cfg.moe_intermediate_size
    assert torch.equal(gate_up[:inter], sd["model.layers.1.mlp.experts.5.gate_proj.weight"])
    assert torch.equal(gate_up[inter:], sd["model.layers.1.mlp.experts.5.up_proj.weight"])
    assert torch.equal(hf["model.layers.1.mlp.experts.down_proj"][5],
                       sd["model.layers.1.mlp.experts.5.down_proj.weight"])
    out = model(torch.tensor([[671, 6102, 294, 8760]]))
    assert out.logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(out.logits).all()
