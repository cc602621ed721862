"""`ds_fp8` routed experts: block-FP8 w13 (gate+up) and w2 per expert, DeepSeek layout.

Parameters (checkpoint layout, stacked over local experts):
  w13_weight (E, 2I, H) fp8, w13_weight_scale_inv (E, 2*ceil(I/128), ceil(H/128)) fp32,
  w2_weight (E, H, I) fp8,  w2_weight_scale_inv (E, ceil(H/128), ceil(I/128)) fp32.

CUDA runs our fused Triton MoE (ds_plugin.kernels.fp8_fused_moe). CPU dequantizes the
experts to the model dtype at load and runs a dense all-expert torch path: every expert
sees every token and the routing weights (zero for unchosen experts) combine them. It
has static shapes (no per-expert gathers), which suits the tiny test models it serves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ds_plugin.quant.fp8_block import (BLOCK, V, _ceil, block_grid, checked_loader,
                                       validate_scales)


class DSBlockFp8MoEMethod(V.FusedMoEMethodBase):
    def __init__(self, config, layer, prefix: str) -> None:
        super().__init__(layer.moe_config)
        self.config = config
        self.prefix = prefix

    def create_weights(self, layer, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        if i % BLOCK:
            # gate and up are concatenated in w13: a partial last block would let one
            # scale row straddle both.
            raise ValueError(f"{self.prefix}: expert intermediate size per partition {i} is "
                             f"not a multiple of {BLOCK}")
        layer.orig_dtype = params_dtype
        loader = extra_weight_attrs.pop("weight_loader")
        fp8, nan = torch.float8_e4m3fn, float("nan")
        tensors = {
            "w13_weight": torch.empty(e, 2 * i, h, dtype=fp8),
            "w2_weight": torch.empty(e, h, i, dtype=fp8),
            # NaN poison: a scale the checkpoint never wrote fails validation at load.
            "w13_weight_scale_inv": torch.full((e, 2 * _ceil(i, BLOCK), _ceil(h, BLOCK)), nan),
            "w2_weight_scale_inv": torch.full((e, _ceil(h, BLOCK), _ceil(i, BLOCK)), nan),
        }
        # One checkpoint tensor per expert and projection, unsharded (vLLM slices it).
        i_full = i * layer.moe_config.tp_size
        stored = {"w1": (i_full, h), "w3": (i_full, h), "w2": (h, i_full)}
        for name, data in tensors.items():
            param = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(name, param)
            want = {k: block_grid(v) for k, v in stored.items()} if "scale" in name else stored
            attrs = dict(extra_weight_attrs,
                         weight_loader=checked_loader(loader, f"{self.prefix}.{name}", want,
                                                      self.config))
            if name.endswith("scale_inv"):
                attrs["quant_method"] = V.MoEScaleKind.BLOCK.value
            V.set_weight_attrs(param, attrs)

    def get_fused_moe_quant_config(self, layer):
        # None: vLLM's modular kernels are not used; apply() runs our own path.
        return None

    def process_weights_after_loading(self, layer) -> None:
        e, n13, h = layer.w13_weight.shape
        i = layer.w2_weight.shape[2]
        validate_scales(f"{self.prefix}.w13_weight_scale_inv", layer.w13_weight_scale_inv.data,
                        (e, _ceil(n13, BLOCK), _ceil(h, BLOCK)))
        validate_scales(f"{self.prefix}.w2_weight_scale_inv", layer.w2_weight_scale_inv.data,
                        (e, _ceil(h, BLOCK), _ceil(i, BLOCK)))
        if layer.apply_router_weight_on_input:
            raise NotImplementedError(f"{self.prefix}: ds_fp8 applies routing weights to the "
                                      f"expert outputs (DeepSeek); apply_router_weight_on_input is set")
        if getattr(layer.activation, "value", layer.activation) != "silu":
            raise NotImplementedError(f"{self.prefix}: ds_fp8 experts support SiLU only, "
                                      f"got {layer.activation}")
        if layer.w13_weight.device.type == "cuda":
            layer.ds_fp8_path = "cuda-fp8"
            self.config.note_path("MoE", "CUDA fp8 (Triton fused MoE)")
            return
        from ds_plugin.kernels import fp8_block_dequant

        for w, s in (("w13_weight", "w13_weight_scale_inv"), ("w2_weight", "w2_weight_scale_inv")):
            deq = fp8_block_dequant(getattr(layer, w).data, getattr(layer, s).data, layer.orig_dtype)
            V.replace_parameter(layer, w, deq)
        layer.ds_fp8_path = "cpu-dequantized"
        self.config.note_path("MoE", "CPU (experts dequantized to the model dtype at load)")

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        """Routed experts only (vLLM's runner adds the shared experts): (M, H) x.dtype."""
        expert_map = layer.expert_map
        if expert_map is not None:
            # Expert parallel: global ids -> local; experts of other ranks contribute 0.
            local = expert_map[topk_ids.long()]
            topk_weights = torch.where(local >= 0, topk_weights, torch.zeros_like(topk_weights))
            topk_ids = local.clamp_min(0)
        if layer.ds_fp8_path == "cpu-dequantized":
            return dense_moe(x, topk_weights, topk_ids, layer.w13_weight, layer.w2_weight)
        from ds_plugin.kernels import fp8_fused_moe

        return fp8_fused_moe(x, topk_weights, topk_ids, layer.w13_weight,
                             layer.w13_weight_scale_inv, layer.w2_weight,
                             layer.w2_weight_scale_inv)


def dense_moe(x, topk_weights, topk_ids, w13, w2) -> torch.Tensor:
    """Every expert on every token, combined by the (mostly zero) routing weights.

    x: (M, H); w13: (E, 2I, H); w2: (E, H, I), all the same float dtype.
    """
    e = w13.shape[0]
    i = w2.shape[2]
    combine = torch.zeros(x.shape[0], e, dtype=torch.float32, device=x.device)
    combine.scatter_add_(1, topk_ids.long(), topk_weights.float())  # (M, E)
    gate_up = torch.einsum("mh,enh->emn", x, w13)  # (E, M, 2I)
    act = F.silu(gate_up[..., :i]) * gate_up[..., i:]
    y = torch.einsum("emi,ehi->emh", act, w2)  # (E, M, H)
    return torch.einsum("me,emh->mh", combine, y.float()).to(x.dtype)
