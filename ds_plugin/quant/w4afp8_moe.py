"""`w4afp8` routed experts: packed int4 w13 (gate+up) and w2 per expert, FP8 activations.

Parameters (checkpoint layout, stacked over local experts; int4_format has the packing):
  w13_weight (E, 2I, H/2) int8, w13_weight_scale_inv (E, 2I, H/128) fp32,
  w2_weight (E, H, I/2) int8,   w2_weight_scale_inv (E, H, I/128) fp32,
  static activations only: w13_input_scale (E_all, 2) (gate, up), w2_input_scale (E_all,)
  fp32, one per checkpoint expert (every rank reads all of them).

Static scales become one per tensor at load, the max over experts of each projection (as
SGLang does; every rank takes the max over all experts, so EP ranks agree with TP ones).

Tensor parallelism splits the intermediate dimension: w13's rows (no packing involved) and
w2's packed K, which must stay a whole number of 128-wide int4 groups per rank. DeepSeek's
2048-wide experts therefore run at TP 1, 2, 4, 8 or 16 (128 per rank); other sizes are
refused at load. Expert parallelism (any EP size vLLM accepts) keeps whole experts and maps
them as ds_fp8 does (`layer.expert_map`).

Execution, one class chosen at load: `TritonW4A8Experts` (CUDA, our fused W4A8 MoE; the
packed weights are rearranged once into int4_format's kernel layout), or on CPU the experts
dequantized to the model dtype once (logged) and `CpuGroupedExperts`.
"""

from __future__ import annotations

import torch

from ds_plugin import envs
from ds_plugin._vllm.quant import (FusedMoEMethodBase, FusedMoeWeightScaleSupported,
                                   replace_parameter, set_weight_attrs)
from ds_plugin.kernels.int4_format import GROUP
from ds_plugin.moe.experts import CpuGroupedExperts, TritonW4A8Experts
from ds_plugin.quant.scales import checked_loader, validate_scales


def _checked_dtype(loader, name: str, dtype: torch.dtype):
    """A loader that refuses a checkpoint tensor of another dtype (a copy would convert)."""
    def load(param, loaded_weight, *args, **kwargs):
        if loaded_weight.dtype != dtype:
            what = "packed int4" if dtype == torch.int8 else "scales"
            raise ValueError(f"{name}: checkpoint tensor is {loaded_weight.dtype}, expected "
                             f"{dtype} (W4AFP8 {what})")
        return loader(param, loaded_weight, *args, **kwargs)
    return load


def _input_scale_loader(name: str, column: int | None):
    """Per-expert scalar `input_scale` into row `expert_id` (global: all ranks keep all)."""
    def load(param, loaded_weight, weight_name=None, shard_id=None, expert_id=None,
             return_success=False, **_):
        if loaded_weight.numel() != 1:
            raise ValueError(f"{name}: checkpoint input_scale has shape "
                             f"{tuple(loaded_weight.shape)}, expected a scalar per expert")
        col = column if column is not None else (0 if shard_id == "w1" else 1)
        target = param.data[expert_id] if param.dim() == 1 else param.data[expert_id, col]
        target.copy_(loaded_weight.reshape(()).float())
        return True if return_success else None
    return load


def check_group_split(prefix: str, hidden: int, inter: int, tp: int) -> None:
    """Refuse a TP size that would split a 128-wide int4 group of w2's packed K (or a
    hidden size that is not whole groups), naming the sizes that work."""
    if hidden % GROUP or inter % (tp * GROUP):
        ok = [t for t in (1, 2, 4, 8, 16, 32, 64) if inter % (t * GROUP) == 0]
        raise ValueError(
            f"{prefix}: W4AFP8 experts need the hidden size ({hidden}) and the intermediate "
            f"size per TP rank ({inter} / {tp}) to be whole int4 groups of {GROUP}; "
            f"tensor-parallel sizes that work for intermediate size {inter}: {ok} "
            f"(expert parallelism keeps experts whole and works with any)")


class DSW4AFp8MoEMethod(FusedMoEMethodBase):
    def __init__(self, config, layer, prefix: str) -> None:
        super().__init__(layer.moe_config)
        self.config = config
        self.prefix = prefix
        self.static = config.moe_static

    def create_weights(self, layer, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        tp = layer.moe_config.tp_size
        i_full = i * tp
        check_group_split(self.prefix, h, i_full, tp)
        layer.orig_dtype = params_dtype
        loader = extra_weight_attrs.pop("weight_loader")
        nan = float("nan")
        stored = {"w1": (i_full, h // 2), "w3": (i_full, h // 2), "w2": (h, i_full // 2)}
        grid = {"w1": (i_full, h // GROUP), "w3": (i_full, h // GROUP), "w2": (h, i_full // GROUP)}
        tensors = {
            "w13_weight": (torch.empty(e, 2 * i, h // 2, dtype=torch.int8), stored, torch.int8),
            "w2_weight": (torch.empty(e, h, i // 2, dtype=torch.int8), stored, torch.int8),
            # NaN poison: a scale the checkpoint never wrote fails validation at load.
            "w13_weight_scale_inv": (torch.full((e, 2 * i, h // GROUP), nan), grid, torch.float32),
            "w2_weight_scale_inv": (torch.full((e, h, i // GROUP), nan), grid, torch.float32),
        }
        for name, (data, want, dtype) in tensors.items():
            param = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(name, param)
            full = f"{self.prefix}.{name}"
            checked = _checked_dtype(checked_loader(loader, full, want), full, dtype)
            attrs = dict(extra_weight_attrs, weight_loader=checked)
            if "scale" in name:
                attrs["quant_method"] = FusedMoeWeightScaleSupported.GROUP.value
            set_weight_attrs(param, attrs)
            # The loader checks the tensor itself (its shape is not the bf16 one).
            param.checkpoint_checked = True
        if self.static:
            e_all = layer.moe_config.num_experts
            for name, shape, col in (("w13_input_scale", (e_all, 2), None),
                                     ("w2_input_scale", (e_all,), 0)):
                param = torch.nn.Parameter(torch.full(shape, nan), requires_grad=False)
                layer.register_parameter(name, param)
                set_weight_attrs(param, dict(extra_weight_attrs, weight_loader=_input_scale_loader(
                    f"{self.prefix}.{name}", col)))
                param.checkpoint_checked = True  # required: static activations need it

    def get_fused_moe_quant_config(self, layer):
        return None  # vLLM's modular kernels are not used; apply() runs our own path

    def process_weights_after_loading(self, layer) -> None:
        e, n13, hp = layer.w13_weight.shape
        h, ip = layer.w2_weight.shape[1:]
        validate_scales(f"{self.prefix}.w13_weight_scale_inv", layer.w13_weight_scale_inv.data,
                        (e, n13, 2 * hp // GROUP))
        validate_scales(f"{self.prefix}.w2_weight_scale_inv", layer.w2_weight_scale_inv.data,
                        (e, h, 2 * ip // GROUP))
        if layer.apply_router_weight_on_input:
            raise ValueError(f"{self.prefix}: w4afp8 applies routing weights to the expert "
                             f"outputs (DeepSeek); apply_router_weight_on_input is set")
        if getattr(layer.activation, "value", layer.activation) != "silu":
            raise ValueError(f"{self.prefix}: w4afp8 experts support SiLU only, got "
                             f"{layer.activation}")
        if self.static:
            for name in ("w13_input_scale", "w2_input_scale"):
                s = getattr(layer, name).data
                validate_scales(f"{self.prefix}.{name}", s, tuple(s.shape))
                # One scale per tensor: the max over experts (and over gate / up).
                replace_parameter(layer, name, s.amax().reshape(1).float())
        if envs.use_triton(layer.w13_weight.device):
            from ds_plugin.kernels.w4a8_moe import kernel_weights

            for w in (layer.w13_weight.data, layer.w2_weight.data):
                for e in range(w.shape[0]):  # one expert at a time bounds the temporary
                    w[e] = kernel_weights(w[e])
            layer.ds_experts = TritonW4A8Experts(self.static)
        else:
            from ds_plugin.kernels.int4_format import dequant_int4

            for w in ("w13_weight", "w2_weight"):
                deq = dequant_int4(getattr(layer, w).data, getattr(layer, f"{w}_scale_inv").data,
                                   layer.orig_dtype)
                replace_parameter(layer, w, deq)
            layer.ds_experts = CpuGroupedExperts()
        self.config.note_path("MoE", layer.ds_experts.name)

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        """Routed experts only (vLLM's runner adds the shared experts): (M, H) x.dtype."""
        return layer.ds_experts(layer, x, topk_weights, topk_ids)
