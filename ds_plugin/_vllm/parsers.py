"""vLLM's tool / reasoning parser bases, OpenAI protocol types, request validation error, and
the classes ds_plugin/patches patches for the parsers (chat serving; the thinking-budget state
of the V1 and V2 model runners)."""

from vllm.entrypoints.generate.base.protocol import (DeltaFunctionCall, DeltaMessage,
                                                     DeltaToolCall, ExtractedToolCallInformation,
                                                     FunctionCall, ToolCall)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
from vllm.exceptions import VLLMValidationError
from vllm.reasoning.abs_reasoning_parsers import ReasoningParser
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tool_parsers.abstract_tool_parser import ToolParser
from vllm.v1.sample.thinking_budget_state import ThinkingBudgetStateHolder
from vllm.v1.worker.gpu.sample.thinking_budget import ThinkingBudgetState

__all__ = [
    "ChatCompletionRequest", "DeltaFunctionCall", "DeltaMessage", "DeltaToolCall",
    "ExtractedToolCallInformation", "FunctionCall", "OpenAIServingChat", "ReasoningParser",
    "ThinkingBudgetState", "ThinkingBudgetStateHolder", "ToolCall", "ToolParser",
    "VLLMValidationError", "make_tool_call_id",
]
