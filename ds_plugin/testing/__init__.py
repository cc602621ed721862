"""Test and demo support that ships with the package: tiny DeepSeek-format checkpoints
(`checkpoint`) and a real vLLM server harness (`server`). Neither imports vLLM."""
