"""DeepSeek-V3 checkpoint names -> model parameters, with a load that names what is wrong.

Release names (bf16 and block-FP8 alike; FP8 adds `<linear>.weight_scale_inv`) map onto
the model as follows; everything else keeps its name:

    self_attn.q_a_proj            -> self_attn.fused_qkv_a_proj   shard 0  (q LoRA only)
    self_attn.kv_a_proj_with_mqa  -> self_attn.fused_qkv_a_proj   shard 1  (q LoRA only)
    mlp[.shared_experts].gate_proj / up_proj -> ...gate_up_proj   shards 0 / 1
    mlp.experts.{e}.gate_proj / up_proj      -> mlp.experts.routed_experts.w13_*  (w1 / w3)
    mlp.experts.{e}.down_proj                -> mlp.experts.routed_experts.w2_*
    model.layers.{num_hidden_layers + j}.*   -> skipped: the MTP layer is the draft model's
                                             (ds_plugin.spec, same plan and shapes)

The plan is built from the model's own parameters, so every parameter that must come from
the checkpoint has an expected tensor name, and (for weights and scales) an expected full
shape from the config. Before a single byte is copied the load can therefore say which
tensor is missing, unexpected or mis-shaped, by its checkpoint name.

Quantization formats vLLM implements (AWQ's qweight / qzeros / scales, ModelOpt NVFP4's
weight / weight_scale / weight_scale_2 / input_scale, Quark MXFP4's weight / weight_scale)
map by the same rules: their parameters carry the checkpoint's suffixes. Their packed
layouts are not the bf16 shapes tabulated here, so for the layers such a method serves the
shape check is vLLM's loaders' (a failure still names the checkpoint tensor). Attention
scales (k_scale, v_scale, ...) are loaded when a checkpoint has them and never demanded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ds_plugin._vllm.layers import default_weight_loader, fused_moe_make_expert_params_mapping
from ds_plugin.model.config import DSConfig

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
# Attention scales vLLM's layers create whether or not a checkpoint carries them (absent ones
# default to 1.0 in vLLM): loaded when present, never demanded.
_OPTIONAL = re.compile(r"\.(k_scale|v_scale|q_scale|prob_scale|_k_scale|_v_scale|_q_scale|"
                       r"_prob_scale)$")


@dataclass(frozen=True)
class Target:
    param: str
    shard: int | str | None = None   # fused-linear shard index, or w1/w2/w3 for experts
    expert: int | None = None        # physical expert id


def checkpoint_plan(model: nn.Module, cfg: DSConfig) -> dict[str, list[Target]]:
    """Checkpoint tensor name -> where it goes (several targets for replicated experts)."""
    mapping = fused_moe_make_expert_params_mapping(
        model, ckpt_gate_proj_name="gate_proj", ckpt_down_proj_name="down_proj",
        ckpt_up_proj_name="up_proj", num_experts=cfg.n_routed_experts,
        num_redundant_experts=getattr(model, "num_redundant_experts", 0))
    plan: dict[str, list[Target]] = {}
    for name, _ in model.named_parameters():
        if ".experts.routed_experts." in name:
            for param_part, ckpt_part, expert, shard in mapping:
                if param_part in name:
                    plan.setdefault(name.replace(param_part, ckpt_part), []).append(
                        Target(name, shard, expert))
        elif ".fused_qkv_a_proj." in name:
            for shard, part in enumerate(("q_a_proj", "kv_a_proj_with_mqa")):
                plan[name.replace("fused_qkv_a_proj", part)] = [Target(name, shard)]
        elif ".gate_up_proj." in name:
            for shard, part in enumerate(("gate_proj", "up_proj")):
                plan[name.replace("gate_up_proj", part)] = [Target(name, shard)]
        else:
            plan[name] = [Target(name)]
    return plan


def expected_shape(name: str, cfg: DSConfig, block: tuple[int, int] | None) -> tuple | None:
    """Full (unsharded) shape of release tensor `name`, or None where not tabulated."""
    h, heads = cfg.hidden_size, cfg.num_heads
    table = {
        "embed_tokens.weight": (cfg.vocab_size, h), "lm_head.weight": (cfg.vocab_size, h),
        "norm.weight": (h,), "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_a_proj.weight": (cfg.q_lora_rank, h),
        "self_attn.q_a_layernorm.weight": (cfg.q_lora_rank,),
        "self_attn.q_b_proj.weight": (heads * cfg.qk_head_dim, cfg.q_lora_rank),
        "self_attn.q_proj.weight": (heads * cfg.qk_head_dim, h),
        "self_attn.kv_a_proj_with_mqa.weight": (cfg.kv_lora_rank + cfg.qk_rope_head_dim, h),
        "self_attn.kv_a_layernorm.weight": (cfg.kv_lora_rank,),
        "self_attn.kv_b_proj.weight": (heads * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                       cfg.kv_lora_rank),
        "self_attn.o_proj.weight": (h, heads * cfg.v_head_dim),
        "mlp.gate.weight": (cfg.n_routed_experts, h),
        "mlp.gate.e_score_correction_bias": (cfg.n_routed_experts,),
    }
    layer = _LAYER.match(name)
    inter = cfg.intermediate_size
    if layer and cfg.is_moe_layer(int(layer.group(1))):
        inter = cfg.moe_intermediate_size * (cfg.n_shared_experts if ".shared_experts." in name
                                             else 1)
    for proj, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)),
                        ("down_proj", (h, inter))):
        table[f"{proj}.weight"] = shape
    scale = name.endswith(".weight_scale_inv")
    key = name.removesuffix("_scale_inv") if scale else name
    key = re.sub(r"^model\.layers\.\d+\.|^model\.", "", key)
    key = re.sub(r"^mlp\.(experts\.\d+|shared_experts)\.", "", key)
    shape = table.get(key)
    if shape is None or not scale:
        return shape
    if block is None:
        return None
    return tuple(-(-d // b) for d, b in zip(shape, block))


def load_checkpoint(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Load release-format `weights` into `model` (a DeepseekV3ForCausalLM); returns the
    parameter names loaded, as vLLM's loader expects."""
    cfg: DSConfig = model.cfg
    plan = checkpoint_plan(model, cfg)
    block = weight_block(getattr(model, "quant_config", None))
    params = dict(model.named_parameters())
    foreign = _foreign_layout_params(model)
    seen: set[str] = set()
    loaded: set[str] = set()
    for name, tensor in weights:
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) >= cfg.num_hidden_layers:
            continue  # MTP layer(s): loaded by the draft model, not the target
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config; some exports include it
        targets = plan.get(name)
        if targets is None:
            raise ValueError(f"checkpoint tensor {name!r} (shape {tuple(tensor.shape)}) has no "
                             "place in DeepseekV3ForCausalLM for this config")
        unchecked = self_checked(params[targets[0].param]) or targets[0].param in foreign
        want = None if unchecked else expected_shape(name, cfg, block)
        if want is not None and tuple(tensor.shape) != want:
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"expected {want} from config.json")
        seen.add(name)
        for t in targets:
            if load_tensor(params[t.param], tensor, t, name):
                loaded.add(t.param)
    missing = sorted(n for n in set(plan) - seen if not _OPTIONAL.search(n))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the model needs: "
                         f"{', '.join(missing[:5])}{more}")
    return loaded


def load_tensor(param: nn.Parameter, tensor: torch.Tensor, t: Target, name: str) -> bool:
    loader = getattr(param, "weight_loader", default_weight_loader)
    try:
        if t.expert is not None:
            # False when the expert lives on another expert-parallel rank.
            return bool(loader(param, tensor, t.param, shard_id=t.shard, expert_id=t.expert,
                               return_success=True))
        if t.shard is not None:
            loader(param, tensor, t.shard)
        else:
            loader(param, tensor)
        return True
    except (AssertionError, RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint tensor {name!r} (shape {tuple(tensor.shape)}, "
                         f"{tensor.dtype}) does not fit parameter {t.param!r} (shape "
                         f"{tuple(param.shape)}, {param.dtype}): {err}") from err


def self_checked(param: nn.Parameter) -> bool:
    # A quant method marks parameters whose loader checks the checkpoint tensor itself (a
    # packed layout the bf16 shape table does not describe) and which the checkpoint must
    # carry even where the name looks optional (W4AFP8's static input scales).
    return getattr(param, "checkpoint_checked", False)


def _foreign_layout_params(model: nn.Module) -> set[str]:
    """Parameters of layers served by a quant method defined outside ds_plugin (vLLM's AWQ,
    ModelOpt, Quark, ...) other than vLLM's unquantized ones: their layouts are the method's."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        cls = type(qm)
        if qm is None or cls.__module__.startswith("ds_plugin.") \
                or cls.__name__.startswith("Unquantized"):
            continue
        out.update(f"{mod_name}.{p}" for p, _ in mod.named_parameters(recurse=False))
    return out


def weight_block(quant_config) -> tuple[int, int] | None:
    block = getattr(quant_config, "weight_block_size", None)
    return tuple(block) if block else None

