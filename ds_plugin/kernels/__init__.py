"""Triton kernels and their fp32 torch twins. Imports torch and triton only, never vLLM."""

__all__: list[str] = []
