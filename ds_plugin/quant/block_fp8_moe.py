"""`ds_fp8` routed experts: block-FP8 w13 (gate+up) and w2 per expert, DeepSeek layout.

Parameters (checkpoint layout, stacked over local experts):
  w13_weight (E, 2I, H) fp8, w13_weight_scale_inv (E, 2*ceil(I/128), ceil(H/128)) fp32,
  w2_weight (E, H, I) fp8,  w2_weight_scale_inv (E, ceil(H/128), ceil(I/128)) fp32.

Execution is ds_plugin.moe.experts', one class chosen at load: our fused Triton MoE on CUDA
(`TritonFp8Experts`); on a CPU with AMX, vLLM's fused CPU FP8 MoE on the fp8 experts as
stored (`AmxFp8Experts`, as vLLM in-tree runs them there); on other CPUs the experts
dequantized to the model dtype once (the reason logged) and run on their routed tokens only
(`CpuGroupedExperts`).
"""

from __future__ import annotations

import torch

from ds_plugin import envs
from ds_plugin._vllm.quant import (FusedMoEMethodBase, FusedMoeWeightScaleSupported,
                                   replace_parameter, set_weight_attrs)
from ds_plugin.kernels.fp8_format import BLOCK, FP8, block_grid, ceil_div
from ds_plugin.moe.experts import AmxFp8Experts, CpuGroupedExperts, TritonFp8Experts
from ds_plugin.quant.scales import FP8_WEIGHT, FP32_SCALE, checked_loader, validate_scales


def cpu_fp8_experts_unavailable(inter: int, hidden: int) -> str | None:
    """Why `AmxFp8Experts` cannot serve these CPU experts (None: it can)."""
    from ds_plugin._vllm.cpu_kernels import fp8_unavailable_reason

    reason = fp8_unavailable_reason()
    if reason is None and (inter % 32 or hidden % 32):
        reason = f"expert sizes {inter} / {hidden} are not multiples of the kernel's 32"
    return reason


class DSBlockFp8MoEMethod(FusedMoEMethodBase):
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
        fp8, nan = FP8, float("nan")
        tensors = {
            "w13_weight": torch.empty(e, 2 * i, h, dtype=fp8),
            "w2_weight": torch.empty(e, h, i, dtype=fp8),
            # NaN poison: a scale the checkpoint never wrote fails validation at load. fp32
            # stated: vLLM builds the model under the model dtype as default, and bf16
            # scales would round every checkpoint scale to 8 bits.
            "w13_weight_scale_inv": torch.full((e, 2 * ceil_div(i, BLOCK), ceil_div(h, BLOCK)),
                                               nan, dtype=torch.float32),
            "w2_weight_scale_inv": torch.full((e, ceil_div(h, BLOCK), ceil_div(i, BLOCK)), nan,
                                              dtype=torch.float32),
        }
        # One checkpoint tensor per expert and projection, unsharded (vLLM slices it).
        i_full = i * layer.moe_config.tp_size
        stored = {"w1": (i_full, h), "w3": (i_full, h), "w2": (h, i_full)}
        for name, data in tensors.items():
            param = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(name, param)
            want = {k: block_grid(v) for k, v in stored.items()} if "scale" in name else stored
            attrs = dict(extra_weight_attrs,
                         weight_loader=checked_loader(
                             loader, f"{self.prefix}.{name}", want,
                             FP32_SCALE if "scale" in name else FP8_WEIGHT, self.config.note_once))
            if name.endswith("scale_inv"):
                attrs["quant_method"] = FusedMoeWeightScaleSupported.BLOCK.value
            set_weight_attrs(param, attrs)

    def get_fused_moe_quant_config(self, layer):
        # None: vLLM's modular kernels are not used; apply() runs our own path.
        return None

    def process_weights_after_loading(self, layer) -> None:
        e, n13, h = layer.w13_weight.shape
        i = layer.w2_weight.shape[2]
        validate_scales(f"{self.prefix}.w13_weight_scale_inv", layer.w13_weight_scale_inv.data,
                        (e, ceil_div(n13, BLOCK), ceil_div(h, BLOCK)))
        validate_scales(f"{self.prefix}.w2_weight_scale_inv", layer.w2_weight_scale_inv.data,
                        (e, ceil_div(h, BLOCK), ceil_div(i, BLOCK)))
        if layer.apply_router_weight_on_input:
            raise ValueError(f"{self.prefix}: ds_fp8 applies routing weights to the "
                                      f"expert outputs (DeepSeek); apply_router_weight_on_input is set")
        if getattr(layer.activation, "value", layer.activation) != "silu":
            raise ValueError(f"{self.prefix}: ds_fp8 experts support SiLU only, "
                                      f"got {layer.activation}")
        why = None
        if envs.use_triton(layer.w13_weight.device):
            layer.ds_experts = TritonFp8Experts()
        elif (why := cpu_fp8_experts_unavailable(n13 // 2, h)) is None:
            from ds_plugin._vllm.cpu_kernels import pack_fp8_weight

            for w in ("w13_weight", "w2_weight"):
                replace_parameter(layer, w, pack_fp8_weight(getattr(layer, w).data))
            layer.ds_experts = AmxFp8Experts()
        else:
            from ds_plugin.kernels.fp8_format import dequant_block

            for w in ("w13_weight", "w2_weight"):
                q, s = getattr(layer, w).data, getattr(layer, f"{w}_scale_inv").data
                deq = torch.empty(q.shape, dtype=layer.orig_dtype)
                for ex in range(q.shape[0]):  # one expert at a time bounds the fp32 temporary
                    deq[ex] = dequant_block(q[ex], s[ex], layer.orig_dtype)
                replace_parameter(layer, w, deq)
            layer.ds_experts = CpuGroupedExperts()
        self.config.note_path("MoE", layer.ds_experts.name + (f"; {why}" if why else ""))

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        """Routed experts only (vLLM's runner adds the shared experts): (M, H) x.dtype."""
        return layer.ds_experts(layer, x, topk_weights, topk_ids)
