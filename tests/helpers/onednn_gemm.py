"""vLLM's oneDNN GEMM dispatch for unquantized CPU linears, on CPUs where oneDNN refuses bf16.

On a CPU with AVX-512 (bf16), vLLM runs every unquantized linear that it dispatches through
`vllm._custom_ops.onednn_mm`: the output is a `torch.empty` that an opaque op then writes
(`_C::onednn_mm(Tensor! c, ...)`). That shape of graph is what broke the compiled FP8 model
(issue 10: Inductor read the router's logits before the op wrote them). On an AVX2-only CPU
oneDNN cannot build a bf16 matmul, vLLM falls back to F.linear, and the bug cannot show.
`install()` swaps in a GEMM with the same graph shape (a `torch.empty` output written by
an opaque op that declares the mutation) so the engine tests reach the AVX-512 code path
on every CPU. The arithmetic is torch's matmul; only the graph shape is vLLM's (the real
handle hides the weight in C++, this one holds it as a tensor).
"""

import torch


@torch.library.custom_op("ds_plugin_tests::onednn_mm_standin", mutates_args=("c",))
def _mm_out(c: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None,
            w: torch.Tensor) -> None:
    y = a @ w
    c.view(-1, c.shape[-1]).copy_(y if bias is None else y + bias)


class _Handle:
    def __init__(self, weight: torch.Tensor) -> None:  # weight (K, N), as vLLM passes it
        self.k, self.n = weight.shape
        self.w = weight.contiguous().clone()


def _mm(handle: _Handle, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.empty((*x.shape[:-1], handle.n), dtype=x.dtype)
    torch.ops.ds_plugin_tests.onednn_mm_standin(out, x.reshape(-1, handle.k), bias, handle.w)
    return out


def native_bf16_onednn() -> bool:
    """Whether vLLM's own oneDNN GEMM builds a bf16 matmul on this CPU."""
    import vllm._custom_ops as ops

    if not ops._supports_onednn:
        return False
    try:
        ops.create_onednn_mm(torch.zeros(64, 16, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


def install() -> str:
    """Route vLLM's unquantized CPU GEMM dispatch through oneDNN's graph shape; returns
    which GEMM runs ("oneDNN" where the real kernel works, else "stand-in")."""
    import vllm._custom_ops as ops

    if native_bf16_onednn():
        return "oneDNN"
    ops._supports_onednn = True
    ops.create_onednn_mm = lambda weight, primitive_cache_size=128: _Handle(weight)
    ops.onednn_mm = _mm
    return "stand-in"
