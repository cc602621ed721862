"""Patches to vLLM behaviour the plugin cannot reach through a registry.

Ledger (one entry per patch; each is applied by register() and is idempotent):

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
