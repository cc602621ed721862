"""Test-only helpers. Tests import vLLM only through ds_plugin._vllm or these modules."""
