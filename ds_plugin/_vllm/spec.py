"""What the MTP drafter and its startup check need from vLLM beyond the model's layers."""

from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

__all__ = ["MODELS_CONFIG_MAP", "VerifyAndUpdateConfig"]
