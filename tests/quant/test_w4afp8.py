"""w4afp8 config and MoE method on CPU, with real vLLM layer objects: which checkpoints are
claimed, the load-time checks (each naming the tensor), the TP rule, the CPU path (experts
dequantized at load) and the CUDA-side path run through the Triton interpreter."""

import itertools
import json

import pytest
import torch

pytest.importorskip("vllm")

from tests.helpers.vllm_probe import (linear_layers, registered_quantization_config,  # noqa: E402
                                      single_rank_context)
from ds_plugin.kernels.fp8_format import calc_diff  # noqa: E402
from ds_plugin.kernels.int4_format import dequant_int4, quant_int4  # noqa: E402
from ds_plugin.kernels.ref_w4a8 import ref_w4a8_fused_moe  # noqa: E402
from ds_plugin.kernels.w4a8_moe import checkpoint_weights  # noqa: E402
from ds_plugin.moe.experts import CpuGroupedExperts, TritonW4A8Experts  # noqa: E402
from ds_plugin.quant.block_fp8 import DSBlockFp8LinearMethod  # noqa: E402
from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod  # noqa: E402
from ds_plugin.quant.w4afp8 import DSW4AFp8Config  # noqa: E402
from ds_plugin.quant.w4afp8_moe import DSW4AFp8MoEMethod, check_group_split  # noqa: E402
from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint  # noqa: E402

CKPT_CFG = {"quant_method": "w4afp8", "activation_scheme": "static", "fmt": "e4m3",
            "weight_block_size": [128, 128], "group_size": 128}
PREFIX = "model.layers.1.mlp.experts"
E, H, I = 4, 256, 128


def test_claims_w4afp8_checkpoints():
    from types import SimpleNamespace as NS

    claim = DSW4AFp8Config.override_quantization_method
    ds = NS(model_type="deepseek_v3")
    assert claim(CKPT_CFG, None) == "w4afp8"
    assert claim({"quant_method": "w4afp8"}, None, hf_config=ds) == "w4afp8"
    assert claim({"quant_method": "awq"}, "w4afp8") == "w4afp8"  # MTP draft inherits the name
    assert claim(CKPT_CFG, "fp8") is None
    assert claim({"quant_method": "fp8", "weight_block_size": [128, 128]}, None) is None
    mixed = {"quantization": {"quant_algo": "MIXED_PRECISION"}}
    assert claim(mixed, None, hf_config=ds) == "w4afp8"
    assert claim(mixed, None, hf_config=NS(model_type="qwen3_moe")) is None
    # ModelOpt's NVFP4 mix carries a per-layer table: vLLM's modelopt_mixed keeps it.
    nvfp4_mix = {"quantization": {"quant_algo": "MIXED_PRECISION",
                                  "quantized_layers": {"a": {"quant_algo": "NVFP4"}}}}
    assert claim(nvfp4_mix, None, hf_config=ds) is None


def test_config_fields_present_or_absent():
    for cfg in ({"quant_method": "w4afp8"}, CKPT_CFG, {**CKPT_CFG, "activation_scheme": "dynamic"}):
        c = DSW4AFp8Config.from_config(cfg)
        assert c.group_size == 128 and c.weight_block_size == [128, 128]
    with pytest.raises(ValueError, match="group_size"):
        DSW4AFp8Config.from_config({**CKPT_CFG, "group_size": 64})
    with pytest.raises(ValueError, match="weight_block_size"):
        DSW4AFp8Config.from_config({**CKPT_CFG, "weight_block_size": [64, 64]})
    with pytest.raises(ValueError, match="fmt"):
        DSW4AFp8Config.from_config({**CKPT_CFG, "fmt": "e5m2"})


def test_register_makes_vllm_resolve_our_config():
    import ds_plugin

    ds_plugin.register()
    assert registered_quantization_config("w4afp8") is DSW4AFp8Config


def test_tp_split_only_at_group_boundaries():
    for tp in (1, 2, 4, 8, 16):
        check_group_split("x", 7168, 2048, tp)
    with pytest.raises(ValueError, match=r"x: .*2048 / 32.*\[1, 2, 4, 8, 16\]"):
        check_group_split("x", 7168, 2048, 32)
    with pytest.raises(ValueError, match="hidden size"):
        check_group_split("x", 7000, 2048, 1)


def test_reads_the_checkpoint_for_scales_and_mtp_experts(tmp_path):
    tiny = TinyConfig(n_shards=1)
    path = write_checkpoint(tmp_path / "w4", tiny, quant="w4afp8")
    cfg = DSW4AFp8Config.from_config(CKPT_CFG)
    cfg.maybe_update_config(str(path), hf_config=type("C", (), {"num_hidden_layers": 2}))
    assert cfg.moe_static and not cfg.mtp_experts_int4 and cfg.num_hidden_layers == 2
    assert cfg.is_mtp_layer("model.layers.2.mlp.experts")
    assert not cfg.is_mtp_layer("model.layers.1.mlp.experts")
    # A checkpoint without expert input scales runs the experts on dynamic scales.
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items()
                           if not k.endswith("input_scale")}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg.maybe_update_config(str(path), hf_config=type("C", (), {"num_hidden_layers": 2}))
    assert not cfg.moe_static


@pytest.fixture(scope="module")
def ctx():
    with single_rank_context():
        yield


_UNIQUE = itertools.count()  # vLLM refuses two layers of one name in a config


def _layer(cfg=None, prefix=PREFIX):
    from ds_plugin._vllm.layers import FusedMoEFactory

    prefix = f"case{next(_UNIQUE)}.{prefix}"
    cfg = cfg or DSW4AFp8Config.from_config(CKPT_CFG)
    cfg.num_hidden_layers = 2
    moe = FusedMoEFactory(num_experts=E, top_k=2, hidden_size=H, intermediate_size=I,
                          renormalize=True, quant_config=cfg, params_dtype=torch.bfloat16,
                          prefix=prefix)
    return moe.routed_experts


def _checkpoint_experts(seed=0):
    """name -> tensor as a W4AFP8 checkpoint stores expert e's projections."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for e in range(E):
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            q, s = quant_int4(torch.randn(shape, generator=g) * 0.05, pow2=True)
            out[f"{e}.{proj}.weight"], out[f"{e}.{proj}.weight_scale_inv"] = q, s
            out[f"{e}.{proj}.input_scale"] = torch.tensor(2.0 ** -(6 + (e + len(proj)) % 3))
    return out


_SHARD = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def _load(layer, tensors, skip=()):
    for name, t in tensors.items():
        e, proj, kind = name.split(".", 2)
        if kind in skip:
            continue
        stem = "w2" if proj == "down_proj" else "w13"
        param = getattr(layer, f"{stem}_{kind}")
        assert param.weight_loader(param, t, f"experts.{stem}_{kind}", shard_id=_SHARD[proj],
                                   expert_id=int(e), return_success=True)


def test_quant_methods_per_layer(ctx):
    layers = linear_layers()
    cfg = DSW4AFp8Config.from_config(CKPT_CFG)
    lin = layers.MergedColumnParallelLinear(256, [256, 256], bias=False, quant_config=cfg,
                                            prefix="model.layers.1.mlp.shared_experts.gate_up_proj",
                                            params_dtype=torch.bfloat16)
    assert isinstance(lin.quant_method, DSBlockFp8LinearMethod)
    assert isinstance(_layer(cfg).quant_method, DSW4AFp8MoEMethod)
    # The MTP layer's routed experts are block-FP8 in the public checkpoints.
    assert isinstance(_layer(cfg, "model.layers.2.mlp.experts").quant_method, DSBlockFp8MoEMethod)


def test_cpu_path_dequantizes_experts_and_takes_per_tensor_scales(ctx):
    layer, tensors = _layer(), _checkpoint_experts()
    _load(layer, tensors)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_experts, CpuGroupedExperts)
    def deq(e, proj):
        return dequant_int4(tensors[f"{e}.{proj}.weight"], tensors[f"{e}.{proj}.weight_scale_inv"])

    for e in range(E):
        gate, up, down = deq(e, "gate_proj"), deq(e, "up_proj"), deq(e, "down_proj")
        assert torch.equal(layer.w13_weight[e].float(), torch.cat([gate, up]))  # exact in bf16
        assert torch.equal(layer.w2_weight[e].float(), down)
    w13_max = max(float(tensors[f"{e}.{p}.input_scale"]) for e in range(E)
                  for p in ("gate_proj", "up_proj"))
    assert layer.w13_input_scale.tolist() == [w13_max]
    assert layer.w2_input_scale.tolist() == [max(float(tensors[f"{e}.down_proj.input_scale"])
                                                 for e in range(E))]


def test_triton_path_through_the_interpreter(ctx, monkeypatch):
    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    layer, tensors = _layer(), _checkpoint_experts(seed=1)
    _load(layer, tensors)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_experts, TritonW4A8Experts) and layer.ds_experts.static
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, H, generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(5, E, generator=g).softmax(-1).topk(2)
    out = layer.quant_method.apply(layer, x, tw, ids)
    # The reference reads the checkpoint layout; the layer holds the kernel layout.
    ref = ref_w4a8_fused_moe(x, tw, ids, checkpoint_weights(layer.w13_weight.data),
                             layer.w13_weight_scale_inv, checkpoint_weights(layer.w2_weight.data),
                             layer.w2_weight_scale_inv, layer.w13_input_scale,
                             layer.w2_input_scale)
    assert calc_diff(out, ref) < 1e-3


@pytest.mark.parametrize("case,match", [
    ("dtype", r"experts\.w13_weight: checkpoint tensor is torch\.float8_e4m3fn"),
    ("unpacked", r"experts\.w13_weight: checkpoint tensor has shape \(128, 256\)"),
    ("scale_shape", r"experts\.w2_weight_scale_inv: checkpoint tensor has shape"),
    ("input_scale_shape", r"experts\.w13_input_scale: checkpoint input_scale has shape"),
])
def test_load_names_the_bad_tensor(ctx, case, match):
    layer, tensors = _layer(), _checkpoint_experts()
    if case == "dtype":
        tensors["0.gate_proj.weight"] = tensors["0.gate_proj.weight"].to(torch.float8_e4m3fn)
    elif case == "unpacked":
        tensors["0.gate_proj.weight"] = torch.zeros(I, H, dtype=torch.int8)
    elif case == "scale_shape":
        tensors["1.down_proj.weight_scale_inv"] = torch.ones(H, 2)
    else:
        tensors["2.up_proj.input_scale"] = torch.ones(2)
    with pytest.raises(ValueError, match=match):
        _load(layer, tensors)


@pytest.mark.parametrize("skip,match", [("weight_scale_inv", "w13_weight_scale_inv: missing"),
                                        ("input_scale", "w13_input_scale: missing")])
def test_missing_scales_fail_at_load_naming_them(ctx, skip, match):
    layer = _layer()
    _load(layer, _checkpoint_experts(), skip=(skip,))
    with pytest.raises(ValueError, match=match):
        layer.quant_method.process_weights_after_loading(layer)


def test_generated_checkpoint_has_the_w4afp8_layout_and_an_exact_twin(tmp_path):
    from ds_plugin.testing.checkpoint import read_state_dict, write_bf16_twin

    tiny = TinyConfig(n_shards=1)
    path = write_checkpoint(tmp_path / "w4", tiny, quant="w4afp8")
    raw = read_state_dict(path, dequantize=False)
    h, i = tiny.hidden_size, tiny.moe_intermediate_size
    for e in range(tiny.n_routed_experts):
        for proj, (n, k) in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            p = f"model.layers.1.mlp.experts.{e}.{proj}."
            assert raw[p + "weight"].dtype == torch.int8 and raw[p + "weight"].shape == (n, k // 2)
            s = raw[p + "weight_scale_inv"]
            assert s.dtype == torch.float32 and s.shape == (n, k // 128)
            assert torch.equal(torch.exp2(torch.log2(s).round()), s)  # powers of two
            assert raw[p + "input_scale"].numel() == 1
            # the MTP layer's experts and everything else quantised are block-FP8
            mtp = f"model.layers.{tiny.num_hidden_layers}.mlp.experts.{e}.{proj}."
            assert raw[mtp + "weight"].dtype == torch.float8_e4m3fn
            assert mtp + "input_scale" not in raw
    assert raw["model.layers.1.mlp.shared_experts.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert raw["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
    cfg = json.loads((path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "w4afp8" and cfg["group_size"] == 128
    twin = write_bf16_twin(path, tmp_path / "twin")
    assert "quantization_config" not in json.loads((twin / "config.json").read_text())
    tw, deq = read_state_dict(twin, dequantize=False), read_state_dict(path)
    assert set(tw) == set(deq) and not any(k.endswith("input_scale") for k in tw)
    for k, v in deq.items():
        assert torch.equal(tw[k], v.to(tw[k].dtype)), k
        if ".mlp.experts." in k and raw[k].dtype == torch.int8:
            assert torch.equal(tw[k].float(), v), k  # int4 x 2^k is exact in bf16
