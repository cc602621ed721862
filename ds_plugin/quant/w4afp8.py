"""`w4afp8`: DeepSeek W4AFP8 checkpoints (e.g. novita/Deepseek-R1-0528-W4AFP8): routed experts
in int4 with FP8 activations, every other linear layer block-FP8 as DeepSeek ships it.

Format (the public releases and SGLang's loader; `kernels/int4_format.py` owns the numbers):
- config.json `quantization_config: {"quant_method": "w4afp8", ...}`; `activation_scheme`,
  `fmt`, `weight_block_size` ([128, 128]) and `group_size` (128) are accepted when present. A
  checkpoint that only has hf_quant_config.json `{"quantization": {"quant_algo":
  "MIXED_PRECISION"}}` (no per-layer `quantized_layers` table, which would be ModelOpt's NVFP4
  mix) is claimed too, for the DeepSeek-V3 family.
- Routed experts of the decoder layers: `w4afp8_moe.py`. Attention, shared experts, dense
  MLPs and the MTP layer's linears: `ds_fp8`'s linear method. The MTP layer's routed experts
  are block-FP8 unless the checkpoint stores them packed (read from its safetensors header
  at config time when the checkpoint is a local directory).
- Router, norms, embeddings, head: unquantized (not linear layers of ours).

Expert activations are static (the checkpoint's per-expert `input_scale`), as SGLang runs
them whatever `activation_scheme` says (DeepSeek's own field describes the block-FP8
linears); a local checkpoint without expert input scales runs them dynamic (per token per
128 channels) instead.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path
from typing import Any

import torch

from ds_plugin._vllm.quant import (LinearBase, QuantizationConfig, RoutedExperts,
                                   UnquantizedLinearMethod)
from ds_plugin.kernels.int4_format import GROUP
from ds_plugin.quant.block_fp8 import (CLAIMED_MODEL_TYPES, DSBlockFp8Config,
                                       DSBlockFp8LinearMethod)
from ds_plugin.quant.block_fp8_moe import DSBlockFp8MoEMethod
from ds_plugin.quant.w4afp8_moe import DSW4AFp8MoEMethod

log = logging.getLogger("vllm.ds_plugin")

NAME = "w4afp8"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class DSW4AFp8Config(QuantizationConfig):
    """int4 routed experts (static or dynamic FP8 activations) + ds_fp8 for the rest."""

    def __init__(self, activation_scheme: str = "dynamic", group_size: int = GROUP,
                 ignored_layers: list[str] | None = None,
                 weight_block_size: list[int] | None = None) -> None:
        super().__init__()
        if group_size != GROUP:
            raise ValueError(f"w4afp8: group_size must be {GROUP}, got {group_size}")
        if activation_scheme not in ("static", "dynamic"):
            raise ValueError(f"w4afp8: activation_scheme must be 'static' or 'dynamic', got "
                             f"{activation_scheme!r}")
        # The block-FP8 layers always quantize activations per token at run time.
        self.fp8 = DSBlockFp8Config("dynamic", ignored_layers, weight_block_size)
        self.activation_scheme = activation_scheme
        self.moe_static = True  # until the checkpoint shows it has no expert input scales
        self.group_size = group_size
        self.weight_block_size = self.fp8.weight_block_size  # vLLM's loaders read it
        self.num_hidden_layers: int | None = None
        self.mtp_experts_int4 = False
        self.paths_logged: set[tuple[str, str]] = set()

    def note_path(self, layer_kind: str, path: str) -> None:
        """Log once per model which path a kind of layer runs (the engine log shows it)."""
        if (layer_kind, path) not in self.paths_logged:
            self.paths_logged.add((layer_kind, path))
            log.info("w4afp8: %s layers run the %s path", layer_kind, path)

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 89  # fp8 tensor cores

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DSW4AFp8Config:
        fmt = config.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise ValueError(f"w4afp8: fmt must be 'e4m3', got {fmt!r}")
        return cls(activation_scheme=config.get("activation_scheme", "dynamic"),
                   group_size=config.get("group_size", GROUP),
                   ignored_layers=(config.get("ignored_layers")
                                   or config.get("modules_to_not_convert")),
                   weight_block_size=config.get("weight_block_size"))

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant: str | None,
                                     hf_config: Any = None) -> str | None:
        if user_quant == NAME:
            return NAME
        if user_quant is not None:
            return None
        if hf_quant_cfg.get("quant_method") == NAME:
            return NAME
        modelopt = hf_quant_cfg.get("quantization") or {}
        mixed = (isinstance(modelopt, dict) and modelopt.get("quant_algo") == "MIXED_PRECISION"
                 and not modelopt.get("quantized_layers")
                 and not hf_quant_cfg.get("quantized_layers"))
        model_type = getattr(hf_config, "model_type", None)
        return NAME if mixed and model_type in CLAIMED_MODEL_TYPES else None

    def maybe_update_config(self, model_name: str, hf_config=None, revision=None) -> None:
        # Which decoder layers are the MTP module (layer index >= num_hidden_layers), how
        # the checkpoint stores that module's routed experts, and whether it has static
        # activation scales for the experts (only a local checkpoint can be read here).
        self.num_hidden_layers = getattr(hf_config, "num_hidden_layers", None)
        path = Path(model_name)
        names = _index_names(path)
        if names is not None:
            self.moe_static = any(n.endswith(".mlp.experts.0.gate_proj.input_scale")
                                  for n in names)
        if self.num_hidden_layers is not None:
            self.mtp_experts_int4 = _stored_as_int8(
                path, f"model.layers.{self.num_hidden_layers}.mlp.experts.0.gate_proj.weight")

    def is_mtp_layer(self, prefix: str) -> bool:
        m = _LAYER.search(prefix)
        return (m is not None and self.num_hidden_layers is not None
                and int(m.group(1)) >= self.num_hidden_layers)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, LinearBase):
            if self.fp8.is_ignored(prefix):
                return UnquantizedLinearMethod()
            return DSBlockFp8LinearMethod(self.fp8, prefix)
        if isinstance(layer, RoutedExperts):
            if self.is_mtp_layer(prefix) and not self.mtp_experts_int4:
                return DSBlockFp8MoEMethod(self.fp8, layer, prefix)
            return DSW4AFp8MoEMethod(self, layer, prefix)
        return None


def _index_names(path: Path) -> dict[str, str] | None:
    """The weight map of local checkpoint `path` (tensor -> shard), None when unreadable."""
    try:
        return json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    except (OSError, ValueError, KeyError):
        return None


def _stored_as_int8(path: Path, tensor: str) -> bool:
    """Whether local checkpoint `path` stores `tensor` as int8 (False when unknown)."""
    try:
        shard = (_index_names(path) or {}).get(tensor)
        if shard is None:
            return False
        with open(path / shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, ValueError, KeyError):
        return False
    return header.get(tensor, {}).get("dtype") == "I8"
