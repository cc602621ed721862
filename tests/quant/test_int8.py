"""w8a8_int8 / blockwise_int8 configs and methods on CPU, with real vLLM layer objects: which
checkpoints are claimed, the layer rules, the load-time checks (each naming the tensor), the
CPU path (weights dequantized at load) and the CUDA-side path through the Triton interpreter."""

import itertools
import json

import pytest
import torch

pytest.importorskip("vllm")

from tests.helpers.vllm_probe import (linear_layers, registered_quantization_config,  # noqa: E402
                                      single_rank_context)
from ds_plugin.kernels.fp8_format import calc_diff  # noqa: E402
from ds_plugin.kernels.int8_format import (dequant_weight, quant_channel,  # noqa: E402
                                           quant_int8_block, snap_to_int_grid)
from ds_plugin.kernels.ref_int8 import ref_int8_fused_moe, ref_int8_gemm_nt  # noqa: E402
from ds_plugin.kernels.int8_format import quant_act  # noqa: E402
from ds_plugin.moe.experts import CpuGroupedExperts, TritonInt8Experts  # noqa: E402
from ds_plugin.quant.int8 import (DSBlockInt8Config, DSInt8LinearMethod,  # noqa: E402
                                  DSW8A8Int8Config, Int8DequantizedLinear, Int8Linear)
from ds_plugin.quant.int8_moe import DSInt8MoEMethod  # noqa: E402
from ds_plugin.testing.checkpoint import (TinyConfig, read_state_dict,  # noqa: E402
                                          write_bf16_twin, write_checkpoint)

CHANNEL_CFG = {"quant_method": "w8a8_int8", "activation_scheme": "dynamic"}
BLOCK_CFG = {"quant_method": "blockwise_int8", "activation_scheme": "dynamic",
             "weight_block_size": [128, 128]}
# compressed-tensors' description of the same per-channel layout (what SGLang serves with
# --quantization w8a8_int8).
CT_CFG = {"quant_method": "compressed-tensors", "format": "int-quantized",
          "ignore": ["lm_head", "re:.*mlp\\.gate$"],
          "config_groups": {"group_0": {
              "targets": ["Linear"],
              "weights": {"num_bits": 8, "type": "int", "strategy": "channel",
                          "symmetric": True, "dynamic": False},
              "input_activations": {"num_bits": 8, "type": "int", "strategy": "token",
                                    "symmetric": True, "dynamic": True}}}}
CONFIGS = {"channel": (DSW8A8Int8Config, CHANNEL_CFG), "block": (DSBlockInt8Config, BLOCK_CFG)}
PREFIX = "model.layers.1.mlp.experts"
E, H, I = 4, 256, 128


def test_claims_int8_checkpoints():
    from types import SimpleNamespace as NS

    ds, other = NS(model_type="deepseek_v3"), NS(model_type="qwen3_moe")
    ch, bl = DSW8A8Int8Config.override_quantization_method, \
        DSBlockInt8Config.override_quantization_method
    assert ch(CHANNEL_CFG, None, hf_config=ds) == "w8a8_int8"
    assert ch(CT_CFG, None, hf_config=ds) == "w8a8_int8"
    assert ch(CT_CFG, None, hf_config=other) is None  # vLLM's compressed-tensors keeps it
    assert ch({"quant_method": "fp8"}, "w8a8_int8") == "w8a8_int8"  # by name (MTP drafts too)
    assert ch(CHANNEL_CFG, "fp8") is None
    fp8_ct = json.loads(json.dumps(CT_CFG))
    fp8_ct["config_groups"]["group_0"]["weights"]["type"] = "float"
    assert ch(fp8_ct, None, hf_config=ds) is None
    assert bl(BLOCK_CFG, None, hf_config=ds) == "blockwise_int8"
    assert bl({**BLOCK_CFG, "weight_block_size": [64, 64]}, None, hf_config=ds) is None
    assert bl({"quant_method": "fp8", "weight_block_size": [128, 128]}, None, hf_config=ds) is None
    assert bl(CHANNEL_CFG, None, hf_config=ds) is None and ch(BLOCK_CFG, None, hf_config=ds) is None


def test_config_fields_and_refusals():
    assert DSBlockInt8Config.from_config(BLOCK_CFG).weight_block_size == [128, 128]
    assert DSW8A8Int8Config.from_config(CT_CFG).ignored_layers == CT_CFG["ignore"]
    with pytest.raises(ValueError, match="weight_block_size"):
        DSBlockInt8Config.from_config({**BLOCK_CFG, "weight_block_size": [64, 64]})
    with pytest.raises(ValueError, match="activation_scheme"):
        DSBlockInt8Config.from_config({**BLOCK_CFG, "activation_scheme": "static"})
    bad = json.loads(json.dumps(CT_CFG))
    bad["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor"
    with pytest.raises(ValueError, match="not int8 per-channel"):
        DSW8A8Int8Config.from_config(bad)


def test_register_makes_vllm_resolve_our_configs():
    import ds_plugin

    ds_plugin.register()
    assert registered_quantization_config("w8a8_int8") is DSW8A8Int8Config
    assert registered_quantization_config("blockwise_int8") is DSBlockInt8Config


@pytest.fixture(scope="module")
def ctx():
    with single_rank_context():
        yield


_UNIQUE = itertools.count()  # vLLM refuses two layers of one name in a config


def _linear(cfg, prefix="model.layers.0.mlp.gate_up_proj", sizes=(256, 256), k=384):
    layers = linear_layers()
    return layers.MergedColumnParallelLinear(k, list(sizes), bias=False, quant_config=cfg,
                                             prefix=f"case{next(_UNIQUE)}.{prefix}",
                                             params_dtype=torch.bfloat16)


def _load_linear(layer, parts, blockwise):
    """Load per-shard checkpoint tensors (gate, up) through the layer's loaders."""
    sname = "weight_scale_inv" if blockwise else "weight_scale"
    for shard, (q, s) in enumerate(parts):
        layer.weight.weight_loader(layer.weight, q, shard)
        scale = getattr(layer, sname)
        scale.weight_loader(scale, s, shard)


def _parts(blockwise, n=256, k=384, seed=0, count=2):
    g = torch.Generator().manual_seed(seed)
    quant = quant_int8_block if blockwise else quant_channel
    return [quant(snap_to_int_grid(torch.randn(n, k, generator=g)), pow2=True)
            for _ in range(count)]


def test_ignored_and_router_layers_stay_unquantized(ctx):
    from ds_plugin._vllm.quant import UnquantizedLinearMethod

    cfg = DSW8A8Int8Config.from_config(CT_CFG)
    assert cfg.is_ignored("model.layers.3.mlp.gate") and cfg.is_ignored("lm_head")
    assert not cfg.is_ignored("model.layers.3.mlp.gate_up_proj")
    assert isinstance(_linear(cfg).quant_method, DSInt8LinearMethod)
    lin = linear_layers().ReplicatedLinear(256, 8, bias=False, quant_config=cfg,
                                           prefix="model.layers.3.mlp.gate",
                                           params_dtype=torch.bfloat16)
    assert isinstance(lin.quant_method, UnquantizedLinearMethod)


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_linear_cpu_path_dequantizes_exactly(ctx, kind):
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer = _linear(cls.from_config(raw))
    parts = _parts(blockwise)
    _load_linear(layer, parts, blockwise)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_int8, Int8DequantizedLinear)
    want = torch.cat([dequant_weight(q, s) for q, s in parts])
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight.float(), want)
    x = torch.randn(3, 384).to(torch.bfloat16)
    assert torch.equal(layer.quant_method.apply(layer, x),
                       torch.nn.functional.linear(x, layer.weight))


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_linear_triton_path_through_the_interpreter(ctx, monkeypatch, kind):
    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer = _linear(cls.from_config(raw))
    parts = _parts(blockwise, seed=1)
    _load_linear(layer, parts, blockwise)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_int8, Int8Linear) and layer.weight.dtype == torch.int8
    x = torch.randn(5, 384).to(torch.bfloat16)
    out = layer.quant_method.apply(layer, x)
    a, a_s = quant_act(x, "group" if blockwise else "token")
    w = torch.cat([q for q, _ in parts])
    s = torch.cat([sc for _, sc in parts])
    ref = ref_int8_gemm_nt(a, a_s, w, s)
    assert (out.float() - ref.float()).abs().max() <= ref.float().abs().max() * 2 ** -7
    # vLLM's MLA reads kv_b_proj back by applying the layer to an fp32 identity matrix.
    eye = layer.quant_method.apply(layer, torch.eye(384))
    assert eye.dtype == torch.float32
    assert torch.allclose(eye.t(), dequant_weight(w, s), rtol=2 ** -20, atol=0)


@pytest.mark.parametrize("kind,case,match", [
    ("channel", "shape", r"gate_up_proj\.weight_scale: checkpoint tensor has shape \(256, 2\)"),
    ("block", "shape", r"gate_up_proj\.weight_scale_inv: checkpoint tensor has shape"),
    ("channel", "weight", r"gate_up_proj\.weight: checkpoint tensor has shape \(257, 384\)"),
])
def test_linear_load_names_the_bad_tensor(ctx, kind, case, match):
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer = _linear(cls.from_config(raw))
    (q, s), part = _parts(blockwise)
    if case == "shape":
        s = torch.ones(256, 2) if not blockwise else torch.ones(3, 3)
    else:
        q = torch.zeros(257, 384, dtype=torch.int8)
    with pytest.raises(ValueError, match=match):
        _load_linear(layer, [(q, s), part], blockwise)


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_linear_missing_scales_fail_naming_them(ctx, kind):
    cls, raw = CONFIGS[kind]
    layer = _linear(cls.from_config(raw))
    layer.weight.weight_loader(layer.weight, _parts(kind == "block")[0][0], 0)
    with pytest.raises(ValueError, match="gate_up_proj.weight_scale.*missing"):
        layer.quant_method.process_weights_after_loading(layer)


def test_block_layout_refuses_unaligned_merged_shards(ctx):
    with pytest.raises(ValueError, match="multiples of 128"):
        _linear(DSBlockInt8Config.from_config(BLOCK_CFG), sizes=(192, 256))
    _linear(DSW8A8Int8Config.from_config(CHANNEL_CFG), sizes=(192, 256))  # channel: any split


# -- experts ---------------------------------------------------------------------------

def _moe(cfg):
    from ds_plugin._vllm.layers import FusedMoEFactory

    moe = FusedMoEFactory(num_experts=E, top_k=2, hidden_size=H, intermediate_size=I,
                          renormalize=True, quant_config=cfg, params_dtype=torch.bfloat16,
                          prefix=f"case{next(_UNIQUE)}.{PREFIX}")
    return moe.routed_experts


_SHARD = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def _checkpoint_experts(blockwise, seed=0):
    g = torch.Generator().manual_seed(seed)
    quant = quant_int8_block if blockwise else quant_channel
    suffix = "weight_scale_inv" if blockwise else "weight_scale"
    out = {}
    for e in range(E):
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            q, s = quant(snap_to_int_grid(torch.randn(shape, generator=g) * 0.05), pow2=True)
            out[f"{e}.{proj}.weight"], out[f"{e}.{proj}.{suffix}"] = q, s
    return out


def _load_experts(layer, tensors, skip=()):
    for name, t in tensors.items():
        e, proj, kind = name.split(".", 2)
        if kind in skip:
            continue
        stem = "w2" if proj == "down_proj" else "w13"
        param = getattr(layer, f"{stem}_{kind}")
        assert param.weight_loader(param, t, f"experts.{stem}_{kind}", shard_id=_SHARD[proj],
                                   expert_id=int(e), return_success=True)


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_experts_cpu_path_dequantizes_exactly(ctx, kind):
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer, tensors = _moe(cls.from_config(raw)), _checkpoint_experts(blockwise)
    assert isinstance(layer.quant_method, DSInt8MoEMethod)
    _load_experts(layer, tensors)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_experts, CpuGroupedExperts)
    suffix = "weight_scale_inv" if blockwise else "weight_scale"

    def deq(e, proj):
        return dequant_weight(tensors[f"{e}.{proj}.weight"], tensors[f"{e}.{proj}.{suffix}"])

    for e in range(E):
        assert torch.equal(layer.w13_weight[e].float(),
                           torch.cat([deq(e, "gate_proj"), deq(e, "up_proj")]))
        assert torch.equal(layer.w2_weight[e].float(), deq(e, "down_proj"))


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_experts_triton_path_through_the_interpreter(ctx, monkeypatch, kind):
    monkeypatch.setenv("DS_PLUGIN_TRITON_ON_CPU", "1")
    cls, raw = CONFIGS[kind]
    layer, tensors = _moe(cls.from_config(raw)), _checkpoint_experts(kind == "block", seed=1)
    _load_experts(layer, tensors)
    layer.quant_method.process_weights_after_loading(layer)
    assert isinstance(layer.ds_experts, TritonInt8Experts)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, H, generator=g).to(torch.bfloat16)
    tw, ids = torch.randn(5, E, generator=g).softmax(-1).topk(2)
    out = layer.quant_method.apply(layer, x, tw, ids)
    ref = ref_int8_fused_moe(x, tw, ids, layer.w13_weight, layer.w13_int8_scale,
                             layer.w2_weight, layer.w2_int8_scale)
    assert calc_diff(out, ref) < 1e-3


@pytest.mark.parametrize("kind,case,match", [
    ("channel", "dtype", r"experts\.w13_weight: checkpoint tensor is torch\.float8_e4m3fn"),
    ("channel", "scale", r"experts\.w2_weight_scale: checkpoint tensor has shape \(256, 2\)"),
    ("block", "scale", r"experts\.w2_weight_scale_inv: checkpoint tensor has shape \(256, 2\)"),
])
def test_experts_load_names_the_bad_tensor(ctx, kind, case, match):
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer, tensors = _moe(cls.from_config(raw)), _checkpoint_experts(blockwise)
    suffix = "weight_scale_inv" if blockwise else "weight_scale"
    if case == "dtype":
        tensors["0.gate_proj.weight"] = tensors["0.gate_proj.weight"].to(torch.float8_e4m3fn)
    else:
        tensors[f"1.down_proj.{suffix}"] = torch.ones(H, 2)
    with pytest.raises(ValueError, match=match):
        _load_experts(layer, tensors)


@pytest.mark.parametrize("kind", ["channel", "block"])
def test_experts_missing_scales_fail_naming_them(ctx, kind):
    cls, raw = CONFIGS[kind]
    blockwise = kind == "block"
    layer = _moe(cls.from_config(raw))
    suffix = "weight_scale_inv" if blockwise else "weight_scale"
    _load_experts(layer, _checkpoint_experts(blockwise), skip=(suffix,))
    with pytest.raises(ValueError, match=f"w13_{suffix}: missing"):
        layer.quant_method.process_weights_after_loading(layer)


def test_generated_checkpoints_share_one_exact_bf16_twin(tmp_path):
    tiny = TinyConfig(n_shards=1)
    ch = write_checkpoint(tmp_path / "ch", tiny, quant="int8-channel")
    bl = write_checkpoint(tmp_path / "bl", tiny, quant="int8-block")
    raw_ch, raw_bl = read_state_dict(ch, dequantize=False), read_state_dict(bl, dequantize=False)
    h, i = tiny.hidden_size, tiny.moe_intermediate_size
    for layer in (1, tiny.num_hidden_layers):  # a decoder layer and the MTP layer
        p = f"model.layers.{layer}.mlp.experts.3.down_proj."
        assert raw_ch[p + "weight"].dtype == torch.int8 and raw_ch[p + "weight"].shape == (h, i)
        assert raw_ch[p + "weight_scale"].shape == (h, 1)
        assert raw_bl[p + "weight_scale_inv"].shape == (2, 1)
    for raw in (raw_ch, raw_bl):
        assert raw["model.layers.0.self_attn.kv_b_proj.weight"].dtype == torch.int8
        assert raw["model.layers.1.mlp.gate.weight"].dtype == torch.bfloat16
        assert raw["lm_head.weight"].dtype == torch.bfloat16
    qc = json.loads((ch / "config.json").read_text())["quantization_config"]
    assert qc == CHANNEL_CFG
    assert json.loads((bl / "config.json").read_text())["quantization_config"] == BLOCK_CFG
    twin_ch = read_state_dict(write_bf16_twin(ch, tmp_path / "twin-ch"), dequantize=False)
    twin_bl = read_state_dict(write_bf16_twin(bl, tmp_path / "twin-bl"), dequantize=False)
    deq = read_state_dict(ch)
    assert set(twin_ch) == set(twin_bl) == set(deq)
    for k, v in deq.items():
        assert torch.equal(twin_ch[k], twin_bl[k]), k
        if raw_ch[k].dtype == torch.int8:
            assert torch.equal(twin_ch[k].float(), v), k  # int8 x 2^k is exact in bf16


def test_block_checkpoint_loads_the_whole_model_as_its_twin(tmp_path):
    """Every layer of a blockwise_int8 tiny checkpoint through our loader and the CPU path
    (in process, as vLLM's loader drives it) holds the bf16 twin's weights bitwise."""
    from ds_plugin.model.deepseek_v3 import DeepseekV3ForCausalLM
    from tests.helpers.vllm_api import EngineArgs, set_current_vllm_config

    path = write_checkpoint(tmp_path / "bl", TinyConfig(n_shards=1), quant="int8-block")
    twin = read_state_dict(write_bf16_twin(path, tmp_path / "twin"), dequantize=False)
    cfg = EngineArgs(model=str(path), skip_tokenizer_init=True, enforce_eager=True,
                     max_model_len=512, gpu_memory_utilization=0.15).create_engine_config()
    assert cfg.model_config.quantization == "blockwise_int8"
    with single_rank_context(), set_current_vllm_config(cfg):
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = DeepseekV3ForCausalLM(vllm_config=cfg)
        finally:
            torch.set_default_dtype(default)
        model.load_weights(iter(read_state_dict(path, dequantize=False).items()))
        ours = [m for m in model.modules()
                if isinstance(getattr(m, "quant_method", None), (DSInt8LinearMethod,
                                                                  DSInt8MoEMethod))]
        for m in ours:
            m.quant_method.process_weights_after_loading(m)
    assert len(ours) >= 5 * model.cfg.num_hidden_layers
    p = dict(model.named_parameters())
    a = "model.layers.1.self_attn."
    assert torch.equal(p[a + "fused_qkv_a_proj.weight"],
                       torch.cat([twin[a + "q_a_proj.weight"],
                                  twin[a + "kv_a_proj_with_mqa.weight"]]))
    assert torch.equal(p[a + "kv_b_proj.weight"], twin[a + "kv_b_proj.weight"])
    m = "model.layers.1.mlp."
    for e in range(model.cfg.n_routed_experts):
        assert torch.equal(p[m + "experts.routed_experts.w13_weight"][e],
                           torch.cat([twin[f"{m}experts.{e}.gate_proj.weight"],
                                      twin[f"{m}experts.{e}.up_proj.weight"]]))
        assert torch.equal(p[m + "experts.routed_experts.w2_weight"][e],
                           twin[f"{m}experts.{e}.down_proj.weight"])
    assert torch.equal(p["model.layers.0.mlp.down_proj.weight"],
                       twin["model.layers.0.mlp.down_proj.weight"])
