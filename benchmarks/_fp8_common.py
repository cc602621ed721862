"""Shared pieces of the block-FP8 benchmarks: ceilings, timing, torch's blockwise scaled_mm."""

from __future__ import annotations

import torch
import triton.testing

# Measured on the H200 of this workplace (brief, 2026-11): used as the ratio denominators;
# copy bandwidth is re-measured in each run and printed beside it.
CEIL_COPY_TBS = 4.27
CEIL_BF16_TFLOPS = 694.0
CEIL_FP8_BLOCKWISE_TFLOPS = 1141.0


def time_ms(fn, graph: bool = True) -> float:
    """Median ms of fn. CUDA-graph replays by default (vLLM runs decode in graphs, and
    that removes launch gaps from what is a kernel measurement)."""
    if graph:
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
        except Exception as e:  # noqa: BLE001 - say so and time without a graph
            print(f"# graph capture failed ({str(e).splitlines()[0][:80]}); timing eagerly")
            torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def copy_bandwidth_tbs() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written over time."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), graph=False)
    del src, dst
    return 2 * (2 << 30) / ms / 1e9


def m_major(a_s):
    """(M, G) scales laid out M-major with strides exactly (1, M): cuBLAS checks the strides
    literally, and for M = 1 `.t().contiguous().t()` keeps (G, 1)."""
    out = torch.empty_strided(a_s.shape, (1, a_s.shape[0]), dtype=a_s.dtype, device=a_s.device)
    return out.copy_(a_s)


def torch_blockwise_mm(a, a_s, b, b_s, expected=None):
    """torch.nn.functional.scaled_mm with the DeepSeek recipe (1x128 on a, 128x128 on b).

    cuBLAS documents a's 1x128 scales as M-major and b as (K, N) column-major; the scale
    layouts torch accepts have moved between releases, so a few are tried and the first
    that runs (and, given `expected`, agrees with it) is returned as a closure. Raises
    with torch's reasons when none does (e.g. N not a multiple of 128).
    """
    import torch.nn.functional as F

    from ds_plugin.kernels.fp8_format import calc_diff

    st = F.ScalingType
    bt = b.t()
    a_scales = {"a_s M-major": m_major(a_s), "a_s row-major": a_s}
    b_scales = {"b_s.t()": b_s.t(), "b_s": b_s, "b_s.t() contiguous": b_s.t().contiguous()}
    errors = []
    for an, sa in a_scales.items():
        for bn, sb in b_scales.items():
            def run(sa=sa, sb=sb):
                return F.scaled_mm(a, bt, sa, st.BlockWise1x128, sb, st.BlockWise128x128,
                                   output_dtype=torch.bfloat16)
            try:
                out = run()
            except Exception as e:  # noqa: BLE001 - collect torch's reason, try the next
                errors.append(f"{an}/{bn}: {str(e).splitlines()[0][:50]}")
                continue
            if expected is not None and calc_diff(out, expected) > 1e-3:
                errors.append(f"{an}/{bn}: wrong result")
                continue
            return run
    raise RuntimeError("; ".join(errors[:2]))
