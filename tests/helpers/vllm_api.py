"""vLLM's public engine API and the classes tests drive directly (importing this imports vLLM).

Tests reach vLLM through ds_plugin._vllm (what the plugin itself uses), this module, or the
lazy functions of vllm_probe.py; nowhere else.
"""

from vllm import LLM, SamplingParams
from vllm.config import set_current_vllm_config
from vllm.engine.arg_utils import EngineArgs
from vllm.inputs import TokensPrompt
from vllm.model_executor.model_loader import get_model_loader
from vllm.plugins import load_general_plugins
from vllm.reasoning import ReasoningParserManager
from vllm.tokenizers.hf import CachedHfTokenizer, get_cached_tokenizer
from vllm.tool_parsers import ToolParserManager
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

__all__ = ["LLM", "BatchUpdate", "CachedHfTokenizer", "EngineArgs", "MoveDirectionality",
           "ReasoningParserManager", "SamplingParams", "ToolParserManager", "TokensPrompt",
           "get_cached_tokenizer", "get_model_loader", "load_general_plugins",
           "set_current_vllm_config"]
