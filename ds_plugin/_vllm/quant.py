"""vLLM's quantization bases, the layer types a method serves, and weight parameters."""

from vllm.model_executor.layers.fused_moe import (FusedMoEMethodBase, FusedMoeWeightScaleSupported,
                                                  RoutedExperts)
from vllm.model_executor.layers.linear import (LinearBase, LinearMethodBase,
                                               UnquantizedLinearMethod)
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import BlockQuantScaleParameter, ModelWeightParameter
from vllm.model_executor.utils import replace_parameter, set_weight_attrs

__all__ = [
    "BlockQuantScaleParameter", "FusedMoEMethodBase", "FusedMoeWeightScaleSupported",
    "LinearBase", "LinearMethodBase", "ModelWeightParameter", "QuantizationConfig",
    "RoutedExperts", "UnquantizedLinearMethod", "replace_parameter", "set_weight_attrs",
]
