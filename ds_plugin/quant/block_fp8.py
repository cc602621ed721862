"""`ds_fp8`: DeepSeek's block-FP8 checkpoints (`quant_method: fp8`, 128x128 weight blocks,
fp32 `weight_scale_inv`, activations quantized per token per 128 channels at run time).

Lifecycle per layer: create_weights (checkpoint layout, scales poisoned with NaN so a
tensor the checkpoint lacks is caught) -> process_weights_after_loading (validate every
scale grid, naming the tensor; pick the run-time path) -> apply.

Implementations, one class chosen per layer at load (`ds_plugin.envs.use_triton`):
- `Fp8Linear` (CUDA): fp8 weights stay fp8; each call quantizes the activations
  (fp8_act_quant) and runs whichever GEMM `gemm_path` picks for (M, N, K): our Triton
  fp8_block_gemm_nt or torch's blockwise scaled_mm (benchmarks/README.md has the
  measurements behind it). Tests run it on a CPU under the Triton interpreter.
- `AmxFp8Linear` (a CPU with AMX, e.g. Xeon Sapphire Rapids / Granite Rapids): the fp8
  weight stays fp8 (VNNI-packed once) and runs vLLM's CPU W8A16 kernel, as vLLM's in-tree
  Fp8 method does there (`ds_plugin._vllm.cpu_kernels`).
- `DequantizedLinear` (a CPU without those kernels, and MLA's kv_b_proj, which vLLM reads
  back as a dense matrix): the weight is dequantized to the model dtype once at load and
  applied with F.linear; scales and layout are validated the same. Why a layer lands here
  is logged once per model.
Routed experts: `block_fp8_moe.py`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ds_plugin import envs
from ds_plugin._vllm.quant import (BlockQuantScaleParameter, LinearBase, LinearMethodBase,
                                   ModelWeightParameter, QuantizationConfig, RoutedExperts,
                                   UnquantizedLinearMethod, replace_parameter)
from ds_plugin.kernels.fp8_format import BLOCK, FP8, block_grid, ceil_div
from ds_plugin.kernels.fp8_linear import fp8_linear, torch_path_agrees
from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod
from ds_plugin.quant.scales import FP8_WEIGHT, FP32_SCALE, checked_loader, validate_scales

log = logging.getLogger("vllm.ds_plugin")

NAME = "ds_fp8"
# HF model_type values whose block-FP8 checkpoints ds_fp8 claims without being named.
CLAIMED_MODEL_TYPES = ("deepseek_v3", "deepseek_mtp")
class DSBlockFp8Config(QuantizationConfig):
    """Claims checkpoints whose quantization_config says fp8 with [128, 128] blocks."""

    def __init__(self, activation_scheme: str = "dynamic", ignored_layers: list[str] | None = None,
                 weight_block_size: list[int] | None = None) -> None:
        super().__init__()
        block = list(weight_block_size or [BLOCK, BLOCK])
        if block != [BLOCK, BLOCK]:
            raise ValueError(f"ds_fp8: weight_block_size must be [128, 128], got {block}")
        if activation_scheme != "dynamic":
            raise ValueError(f"ds_fp8: activation_scheme must be 'dynamic' (per-token groups "
                             f"quantized at run time), got {activation_scheme!r}")
        self.weight_block_size = block
        self.activation_scheme = activation_scheme
        self.ignored_layers = list(ignored_layers or [])
        self.paths_logged: set[str] = set()

    def note_path(self, layer_kind: str, path: str) -> None:
        """Log once per model which path a kind of layer runs (the engine log shows it)."""
        self.note_once(f"{layer_kind} layers run the {path} path")

    def note_once(self, message: str) -> None:
        if message not in self.paths_logged:
            self.paths_logged.add(message)
            log.info("ds_fp8: %s", message)

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 89  # fp8 tensor cores (Ada, Hopper and later)

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSBlockFp8Config:
        return cls(activation_scheme=config.get("activation_scheme", "dynamic"),
                   ignored_layers=config.get("ignored_layers") or config.get("modules_to_not_convert"),
                   weight_block_size=config.get("weight_block_size"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        # Claim DeepSeek's block-FP8 format unless the user named another method; answer
        # to our own name too, so an MTP draft that inherits "ds_fp8" passes vLLM's check.
        if user_quant == NAME:
            return NAME
        is_block_fp8 = (hf_quant_cfg.get("quant_method") == "fp8"
                        and list(hf_quant_cfg.get("weight_block_size") or []) == [BLOCK, BLOCK])
        # Only the DeepSeek-V3 family (and its MTP draft) is claimed automatically: other
        # architectures with the same format keep vLLM's Fp8 method unless the user asks
        # for ds_fp8 by name.
        model_type = getattr(hf_config, "model_type", None)
        ours = model_type is None or model_type in CLAIMED_MODEL_TYPES
        return NAME if is_block_fp8 and ours and user_quant is None else None

    def is_ignored(self, prefix: str) -> bool:
        return any(prefix == p or prefix.startswith(p + ".") for p in self.ignored_layers)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, LinearBase):
            if self.is_ignored(prefix):
                return UnquantizedLinearMethod()
            return DSBlockFp8LinearMethod(self, prefix)
        if isinstance(layer, RoutedExperts):

            return DSBlockFp8MoEMethod(self, layer, prefix)
        return None


class Fp8Linear:
    """fp8 weight as stored; activations quantized per call; per-shape GEMM choice."""

    name = "CUDA fp8 (Triton block GEMM / torch blockwise scaled_mm)"

    def __init__(self, layer: torch.nn.Module) -> None:
        # torch's blockwise path only where this torch/cuBLAS build runs it and agrees.
        self.torch_ok = (layer.weight.device.type == "cuda"
                         and torch_path_agrees(layer.weight.data, layer.weight_scale_inv.data,
                                               layer.orig_dtype))

    def __call__(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = fp8_linear(x, layer.weight, layer.weight_scale_inv, self.torch_ok)
        return y + bias if bias is not None else y


def cpu_fp8_unavailable(layer: torch.nn.Module) -> str | None:
    """Why `AmxFp8Linear` cannot serve this CPU layer (None: it can)."""
    if getattr(layer, "_cpu_skip_gemm_dispatch", False):
        return "MLA's kv_b_proj is read back as a dense matrix"
    from ds_plugin._vllm.cpu_kernels import fp8_unavailable_reason

    reason = fp8_unavailable_reason()
    if reason is None and layer.weight.shape[0] % 32:
        reason = f"output size {layer.weight.shape[0]} is not a multiple of the kernel's 32"
    return reason


class AmxFp8Linear:
    """CPU with AMX: fp8 weight kept (packed once), vLLM's fp8_scaled_mm_cpu per call."""

    name = "CPU AMX fp8 (vLLM's fp8_scaled_mm_cpu: fp8 weights kept, bf16 activations)"

    def __init__(self, layer: torch.nn.Module) -> None:
        from ds_plugin._vllm.cpu_kernels import pack_fp8_weight

        replace_parameter(layer, "weight", pack_fp8_weight(layer.weight.data))

    def __call__(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from ds_plugin._vllm.cpu_kernels import fp8_linear

        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = fp8_linear(x2, layer.weight, layer.weight_scale_inv, bias)
        return y.view(*x.shape[:-1], y.shape[-1])


class DequantizedLinear:
    """CPU: the weight dequantized to the model dtype once, then F.linear."""

    name = "CPU (weights dequantized to the model dtype at load)"

    def __init__(self, layer: torch.nn.Module) -> None:
        from ds_plugin.kernels import fp8_block_dequant

        deq = fp8_block_dequant(layer.weight.data, layer.weight_scale_inv.data, layer.orig_dtype)
        replace_parameter(layer, "weight", deq)

    def __call__(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x may be fp32: vLLM's MLA reads kv_b_proj's weights back by applying the layer to
        # an fp32 identity matrix.
        w = layer.weight if layer.weight.dtype == x.dtype else layer.weight.to(x.dtype)
        return torch.nn.functional.linear(x, w, bias)


class DSBlockFp8LinearMethod(LinearMethodBase):
    """Linear layers with block-FP8 weights (`weight` fp8 (N, K), `weight_scale_inv`)."""

    def __init__(self, config: DSBlockFp8Config, prefix: str) -> None:
        self.config = config
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        tp = getattr(layer, "tp_size", 1)
        split_rows = n != output_size and any(p % BLOCK for p in output_partition_sizes)
        if split_rows or (k != input_size and k % BLOCK):
            # A rank starting inside a 128x128 block would need two checkpoint scales for
            # one of its blocks; vLLM's loaders would hand it another rank's scale rows.
            what = (f"output rows {output_partition_sizes}" if split_rows
                    else f"input columns {k} (of {input_size})")
            raise ValueError(f"{self.prefix}: TP {tp} gives each rank {what}, not whole "
                             f"{BLOCK}x{BLOCK} weight blocks; use a TP size that divides "
                             f"them into multiples of {BLOCK}")
        if any(p % BLOCK for p in output_partition_sizes[:-1]):
            # A merged layer's shards must start on block boundaries, or one scale row
            # would cover two shards' weights (only the last may end in a partial block,
            # as DeepSeek's fused q_a + kv_a, 1536 + 576, does).
            raise ValueError(f"{self.prefix}: merged output sizes {output_partition_sizes}: "
                             f"all but the last must be multiples of {BLOCK}")
        loader = extra_weight_attrs.get("weight_loader")
        # Checkpoint shapes per shard id (unsharded: vLLM slices this rank's part itself).
        tp_out = output_size // n
        stored = {None: (output_size, input_size)}
        if len(output_partition_sizes) > 1:
            stored.update({i: (p * tp_out, input_size) for i, p in enumerate(output_partition_sizes)})
        layer.orig_dtype = params_dtype
        layer.logical_widths = output_partition_sizes
        layer.weight_block_size = self.config.weight_block_size  # vLLM's loaders shard scales by it
        weight = ModelWeightParameter(
            data=torch.empty(n, k, dtype=FP8), input_dim=1, output_dim=0,
            weight_loader=checked_loader(loader, f"{self.prefix}.weight", stored, FP8_WEIGHT))
        layer.register_parameter("weight", weight)
        scale = BlockQuantScaleParameter(
            data=torch.full((ceil_div(n, BLOCK), ceil_div(k, BLOCK)), float("nan"), dtype=torch.float32),
            input_dim=1, output_dim=0,
            weight_loader=checked_loader(loader, f"{self.prefix}.weight_scale_inv",
                                         {k: block_grid(v) for k, v in stored.items()},
                                         FP32_SCALE, self.config.note_once))
        scale.format_ue8m0 = False
        layer.register_parameter("weight_scale_inv", scale)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        validate_scales(f"{self.prefix}.weight_scale_inv", layer.weight_scale_inv.data,
                        block_grid(tuple(layer.weight.shape)))
        if envs.use_triton(layer.weight.device):
            impl, why = Fp8Linear, None
        else:
            why = cpu_fp8_unavailable(layer)
            impl = DequantizedLinear if why else AmxFp8Linear
        layer.ds_fp8 = impl(layer)
        self.config.note_path("linear", impl.name + (f"; {why}" if why else ""))

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return layer.ds_fp8(layer, x, bias)
