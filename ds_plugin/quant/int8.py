"""INT8 DeepSeek checkpoints under SGLang's names: `w8a8_int8` (per-channel weights) and
`blockwise_int8` (128x128 block weights); activations quantized per token at run time.

Format (SGLang's loaders; `kernels/int8_format.py` owns the numbers):
- `w8a8_int8` (meituan/DeepSeek-R1-Channel-INT8): every linear of attention, dense MLPs,
  shared and routed experts is `weight` int8 (N, K) with `weight_scale` fp32 (N, 1); experts
  stack to w13_weight_scale (E, 2I, 1), w2_weight_scale (E, H, 1). Claimed for a
  `quant_method: w8a8_int8` config, for a compressed-tensors config whose every scheme is
  int8 per-channel weights with dynamic per-token int8 activations (the layout SGLang reads
  with `--quantization w8a8_int8`), DeepSeek-V3 family only, or by name.
- `blockwise_int8` (meituan/DeepSeek-R1-Block-INT8): the same linears as `weight` int8 (N, K)
  with `weight_scale_inv` fp32 (ceil(N/128), ceil(K/128)), DeepSeek's block-FP8 layout with
  int8 codes. Claimed for `quant_method: blockwise_int8` with `weight_block_size: [128, 128]`.
- Router, norms, embeddings, head: unquantized (GateLinear and the vocabulary layers take no
  quant method of ours); `ignored_layers` / compressed-tensors `ignore` (names or `re:`
  patterns) stay unquantized too.

Implementations, one class per layer chosen at load (`ds_plugin.envs.use_triton`):
`Int8Linear` (CUDA: int8_act_quant + our Triton int8 GEMM) or, on a CPU,
`Int8DequantizedLinear` (the weight dequantized to the model dtype once, logged, then the
dense CPU path). Routed experts: `int8_moe.py`.

Tensor parallelism: per-channel scales split with their rows, so any TP size works;
block scales need every merged shard, and each rank's K slice of a row-parallel layer, to
start on a 128 boundary (as ds_fp8).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ds_plugin import envs
from ds_plugin._vllm.quant import (BlockQuantScaleParameter, ChannelQuantScaleParameter,
                                   LinearBase, LinearMethodBase, ModelWeightParameter,
                                   QuantizationConfig, RoutedExperts, UnquantizedLinearMethod,
                                   replace_parameter)
from ds_plugin.kernels.int8_format import BLOCK, block_grid
from ds_plugin.quant.block_fp8 import CLAIMED_MODEL_TYPES, DequantizedLinear
from ds_plugin.quant.scales import checked_loader, validate_scales

log = logging.getLogger("vllm.ds_plugin")

CHANNEL_NAME = "w8a8_int8"
BLOCK_NAME = "blockwise_int8"
_CT = ("compressed-tensors", "compressed_tensors")


def _ours(hf_config: Any) -> bool:
    model_type = getattr(hf_config, "model_type", None)
    return model_type is None or model_type in CLAIMED_MODEL_TYPES


def is_ct_int8_channel(cfg: dict[str, Any]) -> bool:
    """A compressed-tensors config whose every scheme is int8 per-channel symmetric static
    weights with dynamic symmetric per-token int8 activations."""
    groups = cfg.get("config_groups")
    if cfg.get("quant_method") not in _CT or not isinstance(groups, dict) or not groups:
        return False
    for scheme in groups.values():
        w, a = scheme.get("weights") or {}, scheme.get("input_activations") or {}
        if not (w.get("num_bits") == 8 and w.get("type") == "int" and w.get("strategy") == "channel"
                and w.get("symmetric", True) and not w.get("dynamic", False)
                and a.get("num_bits") == 8 and a.get("type") == "int"
                and a.get("strategy") == "token" and a.get("dynamic", False)
                and a.get("symmetric", True)):
            return False
    return True


class _Int8Config(QuantizationConfig):
    """Shared by both layouts: layer rules, ignored layers, the path log."""

    NAME = ""
    BLOCKWISE = False

    def __init__(self, ignored_layers: list[str] | None = None) -> None:
        super().__init__()
        self.ignored_layers = list(ignored_layers or [])
        self.paths_logged: set[tuple[str, str]] = set()

    def note_path(self, layer_kind: str, path: str) -> None:
        """Log once per model which path a kind of layer runs (the engine log shows it)."""
        if (layer_kind, path) not in self.paths_logged:
            self.paths_logged.add((layer_kind, path))
            log.info("%s: %s layers run the %s path", self.NAME, layer_kind, path)

    def get_name(self) -> str:
        return self.NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 75  # int8 tensor cores (Turing and later: A100, L40S, H100, H200)

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Int8Config:
        return cls(config.get("ignored_layers") or config.get("ignore")
                   or config.get("modules_to_not_convert"))

    def is_ignored(self, prefix: str) -> bool:
        for p in self.ignored_layers:
            # compressed-tensors' `ignore` entries: module names, or "re:" patterns matched
            # from the start of the name as compressed-tensors matches them.
            if p.startswith("re:"):
                if re.match(p[3:], prefix):
                    return True
            elif prefix == p or prefix.startswith(p + "."):
                return True
        return False

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        from ds_plugin.quant.int8_moe import DSInt8MoEMethod

        if isinstance(layer, LinearBase):
            if self.is_ignored(prefix):
                return UnquantizedLinearMethod()
            return DSInt8LinearMethod(self, prefix)
        if isinstance(layer, RoutedExperts):
            return DSInt8MoEMethod(self, layer, prefix)
        return None


class DSW8A8Int8Config(_Int8Config):
    """`w8a8_int8`: int8 weights with per-channel scales, per-token int8 activations."""

    NAME = CHANNEL_NAME

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSW8A8Int8Config:
        if config.get("quant_method") in _CT and not is_ct_int8_channel(config):
            raise ValueError("w8a8_int8: the compressed-tensors config is not int8 per-channel "
                             "weights with dynamic per-token int8 activations")
        return super().from_config(config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        if user_quant == CHANNEL_NAME:
            return CHANNEL_NAME  # also an MTP draft that inherits the name
        if user_quant is not None:
            return None
        method = hf_quant_cfg.get("quant_method")
        claim = method == CHANNEL_NAME or is_ct_int8_channel(hf_quant_cfg)
        return CHANNEL_NAME if claim and _ours(hf_config) else None


class DSBlockInt8Config(_Int8Config):
    """`blockwise_int8`: int8 weights in 128x128 blocks, per-token-group int8 activations."""

    NAME = BLOCK_NAME
    BLOCKWISE = True

    def __init__(self, ignored_layers: list[str] | None = None,
                 weight_block_size: list[int] | None = None,
                 activation_scheme: str = "dynamic") -> None:
        super().__init__(ignored_layers)
        block = list(weight_block_size or [BLOCK, BLOCK])
        if block != [BLOCK, BLOCK]:
            raise ValueError(f"blockwise_int8: weight_block_size must be [128, 128], got {block}")
        if activation_scheme != "dynamic":
            raise ValueError(f"blockwise_int8: activation_scheme must be 'dynamic' (per-token "
                             f"groups quantized at run time), got {activation_scheme!r}")
        self.weight_block_size = block  # vLLM's loaders shard block scales by it

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSBlockInt8Config:
        return cls(config.get("ignored_layers") or config.get("modules_to_not_convert"),
                   config.get("weight_block_size"), config.get("activation_scheme", "dynamic"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        if user_quant == BLOCK_NAME:
            return BLOCK_NAME
        if user_quant is not None:
            return None
        claim = (hf_quant_cfg.get("quant_method") == BLOCK_NAME
                 and list(hf_quant_cfg.get("weight_block_size") or []) == [BLOCK, BLOCK])
        return BLOCK_NAME if claim and _ours(hf_config) else None


class Int8Linear:
    """int8 weight as stored; activations quantized per call; our Triton int8 GEMM."""

    name = "CUDA int8 (Triton int8 GEMM, activations quantized per token)"

    def __init__(self, layer: torch.nn.Module) -> None:
        pass

    def __call__(self, layer, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from ds_plugin.kernels.int8_gemm import int8_linear

        y = int8_linear(x, layer.weight, layer.int8_scale)
        return y + bias if bias is not None else y


class Int8DequantizedLinear(DequantizedLinear):
    """CPU: the int8 weight dequantized to the model dtype once, then F.linear."""

    name = "CPU (int8 weights dequantized to the model dtype at load)"

    def __init__(self, layer: torch.nn.Module) -> None:
        # Not DequantizedLinear.__init__ (that one decodes fp8 blocks); its __call__ is shared.
        from ds_plugin.kernels.int8_format import dequant_weight

        deq = dequant_weight(layer.weight.data, layer.int8_scale.data, layer.orig_dtype)
        replace_parameter(layer, "weight", deq)


class DSInt8LinearMethod(LinearMethodBase):
    """Linear layers with int8 weights, per-channel (`weight_scale`) or block
    (`weight_scale_inv`) scales."""

    def __init__(self, config: _Int8Config, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.scale_name = "weight_scale_inv" if config.BLOCKWISE else "weight_scale"

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        blockwise = self.config.BLOCKWISE
        if blockwise and any(p % BLOCK for p in output_partition_sizes[:-1]):
            raise ValueError(f"{self.prefix}: merged output sizes {output_partition_sizes}: "
                             f"all but the last must be multiples of {BLOCK} (block scales)")
        if blockwise and k != input_size and k % BLOCK:
            raise ValueError(f"{self.prefix}: input size per tensor-parallel rank {k} is not a "
                             f"multiple of {BLOCK}, so a block scale would straddle two ranks")
        loader = extra_weight_attrs.get("weight_loader")
        tp_out = output_size // n
        stored = {None: (output_size, input_size)}
        if len(output_partition_sizes) > 1:
            stored.update({i: (p * tp_out, input_size)
                           for i, p in enumerate(output_partition_sizes)})
        layer.orig_dtype = params_dtype
        layer.logical_widths = output_partition_sizes
        weight = ModelWeightParameter(
            data=torch.empty(n, k, dtype=torch.int8), input_dim=1, output_dim=0,
            weight_loader=checked_loader(loader, f"{self.prefix}.weight", stored))
        layer.register_parameter("weight", weight)
        name = f"{self.prefix}.{self.scale_name}"
        if blockwise:
            layer.weight_block_size = self.config.weight_block_size
            scale = BlockQuantScaleParameter(
                data=torch.full(block_grid((n, k)), float("nan")), input_dim=1, output_dim=0,
                weight_loader=checked_loader(loader, name,
                                             {s: block_grid(v) for s, v in stored.items()}))
            scale.format_ue8m0 = False
        else:
            scale = ChannelQuantScaleParameter(
                data=torch.full((n, 1), float("nan")), output_dim=0,
                weight_loader=checked_loader(loader, name,
                                             {s: (v[0], 1) for s, v in stored.items()}))
        layer.register_parameter(self.scale_name, scale)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        n, k = layer.weight.shape
        scale = getattr(layer, self.scale_name).data
        if self.config.BLOCKWISE:
            validate_scales(f"{self.prefix}.{self.scale_name}", scale, block_grid((n, k)))
        else:
            validate_scales(f"{self.prefix}.{self.scale_name}", scale, (n, 1),
                            "one fp32 scale per output channel")
        layer.int8_scale = getattr(layer, self.scale_name)  # one name for both layouts
        impl = Int8Linear if envs.use_triton(layer.weight.device) else Int8DequantizedLinear
        layer.ds_int8 = impl(layer)
        self.config.note_path("linear", impl.name)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        return layer.ds_int8(layer, x, bias)

