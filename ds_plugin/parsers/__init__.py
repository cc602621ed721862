"""DeepSeek tool-call and reasoning parsers, chat templates, thinking budget.

Serve with SGLang's or vLLM's names (both resolve to these classes once ds-plugin is
installed):

    --enable-auto-tool-choice --tool-call-parser deepseekv3   (or deepseek_v3)   V3, R1
                              --tool-call-parser deepseekv31  (or deepseek_v31)  V3.1
    --reasoning-parser deepseek-r1 (or deepseek_r1)   always thinking (R1)
    --reasoning-parser deepseek-v3 (or deepseek_v3)   V3.1: thinking iff the request sets
                              chat_template_kwargs {"thinking": true} (or enable_thinking)
    --chat-template <ds_plugin.parsers.templates.template_path("deepseekv31")>  tool use

A thinking budget is `thinking_token_budget: N`, or SGLang's `custom_params:
{"thinking_budget": N}`, or `vllm_xargs: {"thinking_budget": N}` (needs a reasoning
parser); a negative or non-integer budget is an HTTP 400.

Layout: `scan`, `tool_calls`, `reasoning`, `thinking_budget`, `templates` are pure
Python (no vLLM); `vllm_tool_parser` and `vllm_reasoning_parser` adapt them to vLLM.
"""

__all__ = ["reasoning", "scan", "templates", "thinking_budget", "tool_calls"]
