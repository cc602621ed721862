"""vLLM's MLA backend bases and the enums a backend declares itself with."""

from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.attention.mla_attention import (MLACommonBackend, MLACommonImpl,
                                                                MLACommonMetadata,
                                                                MLACommonMetadataBuilder,
                                                                QueryLenSupport)
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, MultipleOf

__all__ = [
    "AttentionCGSupport", "AttentionType", "MLACommonBackend", "MLACommonImpl",
    "MLACommonMetadata", "MLACommonMetadataBuilder", "MultipleOf", "QueryLenSupport",
    "current_max_model_len",
]


def current_max_model_len(default: int) -> int:
    """max_model_len of the vLLM config current while layers are built (else `default`)."""
    model_config = get_current_vllm_config().model_config
    return int(getattr(model_config, "max_model_len", 0) or default)
