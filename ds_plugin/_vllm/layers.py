"""vLLM's parallel layers, decorators and loaders that the DeepSeek-V3 model is written on."""

from vllm.compilation.decorators import support_torch_compile
from vllm.config import get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import MLAAttention
from vllm.model_executor.layers.fused_moe import (FusedMoEFactory, GateLinear,
                                                  fused_moe_make_expert_params_mapping)
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                               ReplicatedLinear, RowParallelLinear)
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                 VocabParallelEmbedding)
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

__all__ = [
    "ColumnParallelLinear", "FusedMoEFactory", "GateLinear", "LogitsProcessor", "MLAAttention",
    "MergedColumnParallelLinear", "ParallelLMHead", "RMSNorm", "ReplicatedLinear",
    "RowParallelLinear", "SiluAndMul", "VocabParallelEmbedding", "default_weight_loader",
    "fused_moe_make_expert_params_mapping", "get_current_vllm_config",
    "get_tensor_model_parallel_rank", "get_tensor_model_parallel_world_size", "get_rope",
    "stated_config_fields", "support_torch_compile",
]


def stated_config_fields(model_config) -> set[str] | None:
    """Keys the model's config.json states, plus dict --hf-overrides: what transformers got
    before filling in its defaults. None when config.json cannot be read (nothing to check)
    or the overrides are a function (what it sets cannot be known)."""
    overrides = model_config.hf_overrides or {}
    if callable(overrides):
        return None
    raw = get_hf_file_to_dict("config.json", model_config.hf_config_path or model_config.model,
                              model_config.revision)
    return set(raw) | set(overrides) if isinstance(raw, dict) else None
