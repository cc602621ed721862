"""Triton kernels and their fp32 torch twins. Imports torch and triton only, never vLLM."""

from ds_plugin.kernels.fp8_gemm import fp8_block_gemm_nt
from ds_plugin.kernels.fp8_moe import fp8_fused_moe, fp8_grouped_gemm_nt, moe_align
from ds_plugin.kernels.fp8_quant import fp8_act_quant, fp8_block_dequant, fp8_silu_mul_quant
from ds_plugin.kernels.mla_decode import mla_decode, mla_decode_num_splits
from ds_plugin.kernels.mla_kv_cache import mla_kv_cache_write
from ds_plugin.kernels.triton_features import check_triton

# Any import of a kernel runs this package first: a Triton lacking a feature a kernel needs
# fails here, naming it, before anything is compiled or launched.
check_triton()

__all__: list[str] = [
    # block-FP8 (DeepSeek-V3 checkpoints): fp8_quant.py, fp8_gemm.py, fp8_moe.py
    "fp8_act_quant", "fp8_silu_mul_quant", "fp8_block_dequant", "fp8_block_gemm_nt",
    "moe_align", "fp8_grouped_gemm_nt", "fp8_fused_moe",
    # MLA (latent cache, absorbed decode): mla_kv_cache.py, mla_decode.py; twins in ref_mla.py
    "mla_kv_cache_write", "mla_decode", "mla_decode_num_splits",
]
