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
parser); anything but an integer from 0 to 2**31 - 1 (a bool included) is an HTTP 400
naming the field. It counts from wherever the thoughts opened: a `<think>` in the prompt
or the output, or the output's first token (R1 after a tool result).

Requests are checked before the model sees them: a tool whose `parameters` is not JSON
Schema, and (with the templates here) a message role the template cannot render, are an
HTTP 400 naming the tool and field, or the role.

Layout: `scan`, `tokens`, `tool_calls`, `tool_schema`, `reasoning`, `thinking_budget`,
`templates` are pure Python (no vLLM); `vllm_tool_parser` and `vllm_reasoning_parser`
adapt them to vLLM. What vLLM's own code must do differently is in ds_plugin/patches.
"""

__all__ = ["reasoning", "scan", "templates", "thinking_budget", "tokens", "tool_calls",
           "tool_schema"]
