"""vLLM's MLA backend bases, the enums a backend declares itself with, and config lookups."""

from vllm.config import VllmConfig, get_current_vllm_config, get_layers_from_vllm_config
from vllm.model_executor.layers.attention.mla_attention import (MLACommonBackend,
                                                                MLACommonDecodeMetadata,
                                                                MLACommonImpl, MLACommonMetadata,
                                                                MLACommonMetadataBuilder,
                                                                QueryLenSupport)
from vllm.model_executor.layers.attention_layer_base import AttentionLayerBase
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, MultipleOf

__all__ = [
    "AttentionCGSupport", "AttentionLayerBase", "AttentionType", "MLACommonBackend",
    "MLACommonDecodeMetadata", "MLACommonImpl", "MLACommonMetadata", "MLACommonMetadataBuilder",
    "MultipleOf", "QueryLenSupport", "VllmConfig", "get_current_vllm_config",
    "get_layers_from_vllm_config",
]
