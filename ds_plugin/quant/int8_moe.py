"""INT8 routed experts (`w8a8_int8` per channel, `blockwise_int8` per block), DeepSeek layout.

Parameters (checkpoint layout, stacked over local experts):
  w13_weight (E, 2I, H) int8, w2_weight (E, H, I) int8, and either
  per channel: w13_weight_scale (E, 2I, 1), w2_weight_scale (E, H, 1) fp32
               (checkpoint: experts.{e}.{gate,up,down}_proj.weight_scale, (N, 1)), or
  per block:   w13_weight_scale_inv (E, 2*ceil(I/128), ceil(H/128)),
               w2_weight_scale_inv (E, ceil(H/128), ceil(I/128)) fp32.

Tensor parallelism splits the intermediate dimension: per-channel scales follow their rows
(any TP size); block scales need the per-rank intermediate size to be whole 128 blocks.

Execution, one class chosen at load (ds_plugin.moe.experts): `TritonInt8Experts` (CUDA, our
fused INT8 MoE on the weights as stored), or on CPU the experts dequantized to the model
dtype once (logged) and `CpuGroupedExperts` (top-k experts per token only).
"""

from __future__ import annotations

import torch

from ds_plugin import envs
from ds_plugin._vllm.quant import (FusedMoEMethodBase, FusedMoeWeightScaleSupported,
                                   replace_parameter, set_weight_attrs)
from ds_plugin.kernels.int8_format import BLOCK, block_grid
from ds_plugin.moe.experts import CpuGroupedExperts, TritonInt8Experts
from ds_plugin.quant.scales import checked_loader, validate_scales


def _checked_int8(loader, name: str):
    """A loader that refuses a weight of another dtype (copying would convert it)."""
    def load(param, loaded_weight, *args, **kwargs):
        if loaded_weight.dtype != torch.int8:
            raise ValueError(f"{name}: checkpoint tensor is {loaded_weight.dtype}, expected "
                             f"torch.int8 (INT8 expert weights)")
        return loader(param, loaded_weight, *args, **kwargs)
    return load


class DSInt8MoEMethod(FusedMoEMethodBase):
    def __init__(self, config, layer, prefix: str) -> None:
        super().__init__(layer.moe_config)
        self.config = config
        self.prefix = prefix
        self.blockwise = config.BLOCKWISE
        self.suffix = "_scale_inv" if self.blockwise else "_scale"

    def _grids(self, e: int, h: int, i: int):
        """Per-layer scale shapes and per-checkpoint-tensor scale shapes."""
        if self.blockwise:
            return ((e, *block_grid((2 * i, h))), (e, *block_grid((h, i))),
                    lambda shape: block_grid(shape))
        return (e, 2 * i, 1), (e, h, 1), lambda shape: (shape[0], 1)

    def create_weights(self, layer, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs) -> None:
        e, h, i = num_experts, hidden_size, intermediate_size_per_partition
        if self.blockwise and i % BLOCK:
            raise ValueError(f"{self.prefix}: expert intermediate size per partition {i} is "
                             f"not a multiple of {BLOCK} (block scales; gate and up share "
                             f"w13, so a partial block would straddle both)")
        layer.orig_dtype = params_dtype
        loader = extra_weight_attrs.pop("weight_loader")
        nan = float("nan")
        s13, s2, ckpt_grid = self._grids(e, h, i)
        tensors = {
            "w13_weight": torch.empty(e, 2 * i, h, dtype=torch.int8),
            "w2_weight": torch.empty(e, h, i, dtype=torch.int8),
            # NaN poison: a scale the checkpoint never wrote fails validation at load.
            f"w13_weight{self.suffix}": torch.full(s13, nan),
            f"w2_weight{self.suffix}": torch.full(s2, nan),
        }
        i_full = i * layer.moe_config.tp_size
        stored = {"w1": (i_full, h), "w3": (i_full, h), "w2": (h, i_full)}
        kind = (FusedMoeWeightScaleSupported.BLOCK if self.blockwise
                else FusedMoeWeightScaleSupported.CHANNEL).value
        for name, data in tensors.items():
            param = torch.nn.Parameter(data, requires_grad=False)
            layer.register_parameter(name, param)
            full = f"{self.prefix}.{name}"
            if "scale" in name:
                checked = checked_loader(loader, full,
                                         {k: ckpt_grid(v) for k, v in stored.items()})
                attrs = dict(extra_weight_attrs, weight_loader=checked, quant_method=kind)
            else:
                checked = _checked_int8(checked_loader(loader, full, stored), full)
                attrs = dict(extra_weight_attrs, weight_loader=checked)
            set_weight_attrs(param, attrs)

    def get_fused_moe_quant_config(self, layer):
        return None  # vLLM's modular kernels are not used; apply() runs our own path

    def process_weights_after_loading(self, layer) -> None:
        e, n13, h = layer.w13_weight.shape
        i = layer.w2_weight.shape[2]
        s13, s2, _ = self._grids(e, h, i)
        what = ("one fp32 scale per 128x128 weight block" if self.blockwise
                else "one fp32 scale per output channel")
        for name, want in (("w13_weight", s13), ("w2_weight", s2)):
            sname = f"{name}{self.suffix}"
            validate_scales(f"{self.prefix}.{sname}", getattr(layer, sname).data, want, what)
        if layer.apply_router_weight_on_input:
            raise ValueError(f"{self.prefix}: {self.config.NAME} applies routing weights to the "
                             f"expert outputs (DeepSeek); apply_router_weight_on_input is set")
        if getattr(layer.activation, "value", layer.activation) != "silu":
            raise ValueError(f"{self.prefix}: {self.config.NAME} experts support SiLU only, "
                             f"got {layer.activation}")
        layer.w13_int8_scale = getattr(layer, f"w13_weight{self.suffix}")
        layer.w2_int8_scale = getattr(layer, f"w2_weight{self.suffix}")
        if envs.use_triton(layer.w13_weight.device):
            layer.ds_experts = TritonInt8Experts()
        else:
            from ds_plugin.kernels.int8_format import dequant_weight

            for w in ("w13_weight", "w2_weight"):
                scale = getattr(layer, f"{w}{self.suffix}").data
                replace_parameter(layer, w, dequant_weight(getattr(layer, w).data, scale,
                                                           layer.orig_dtype))
            layer.ds_experts = CpuGroupedExperts()
        self.config.note_path("MoE", layer.ds_experts.name)

    def apply(self, layer, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              shared_experts=None, shared_experts_input=None) -> torch.Tensor:
        """Routed experts only (vLLM's runner adds the shared experts): (M, H) x.dtype."""
        return layer.ds_experts(layer, x, topk_weights, topk_ids)
