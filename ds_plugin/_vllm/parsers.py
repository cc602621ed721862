"""vLLM's tool / reasoning parser bases, OpenAI protocol types and request validation error."""

from vllm.entrypoints.generate.base.protocol import (DeltaFunctionCall, DeltaMessage,
                                                     DeltaToolCall, ExtractedToolCallInformation,
                                                     FunctionCall, ToolCall)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.exceptions import VLLMValidationError
from vllm.reasoning.abs_reasoning_parsers import ReasoningParser
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tool_parsers.abstract_tool_parser import ToolParser

__all__ = [
    "ChatCompletionRequest", "DeltaFunctionCall", "DeltaMessage", "DeltaToolCall",
    "ExtractedToolCallInformation", "FunctionCall", "ReasoningParser", "ToolCall", "ToolParser",
    "VLLMValidationError", "make_tool_call_id",
]
