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


# ----------------------------------------------------------- MoE prefill peers

def sorted_group_offsets(ids, num_experts, align=16):
    """Rows per expert of a routing, each group padded to `align` rows (torch's grouped
    GEMMs want aligned groups): (total rows, int32 cumulative offsets)."""
    counts = torch.bincount(ids.reshape(-1), minlength=num_experts)
    padded = (counts + align - 1) // align * align
    return int(padded.sum()), torch.cumsum(padded, 0).to(torch.int32)


def torch_grouped_peers(ids, w13b, w2b, inter):
    """Closures for bf16 torch._grouped_mm (gate/up, SiLU*mul, down) and rowwise-FP8
    torch._scaled_grouped_mm (the two GEMMs) over rows pre-sorted by expert: routing,
    quantization and combine are left out, so these peers are flattered."""
    e, _, h = w13b.shape
    rows, offs = sorted_group_offsets(ids, e)
    a = torch.randn(rows, h, device="cuda").to(torch.bfloat16)
    fp8 = torch.float8_e4m3fn

    def bf16():
        g = torch._grouped_mm(a, w13b.transpose(1, 2), offs=offs)
        act = torch.nn.functional.silu(g[:, :inter]) * g[:, inter:]
        return torch._grouped_mm(act, w2b.transpose(1, 2), offs=offs)

    aq, actq = a.to(fp8), torch.randn(rows, inter, device="cuda").to(fp8)
    w13q, w2q = w13b.to(fp8), w2b.to(fp8)
    sa = torch.ones(rows, device="cuda")
    s13, s2 = torch.ones(e, 2 * inter, device="cuda"), torch.ones(e, h, device="cuda")

    def scaled(fast=True):
        torch._scaled_grouped_mm(aq, w13q.transpose(1, 2), sa, s13, offs=offs,
                                 out_dtype=torch.bfloat16, use_fast_accum=fast)
        return torch._scaled_grouped_mm(actq, w2q.transpose(1, 2), sa, s2, offs=offs,
                                        out_dtype=torch.bfloat16, use_fast_accum=fast)
    return {"bf16 _grouped_mm": bf16, "fp8 rowwise _scaled_grouped_mm": scaled}


def flashinfer_moe_peers(x, tw, ids, w13, w13_s, w2, w2_s):
    """FlashInfer's block-scale FP8 MoE entries that may run on this card, as closures
    returning the (M, H) output (verified by the caller), plus lines describing what
    else FlashInfer exports under those names (signatures), for the report."""
    import inspect

    import flashinfer

    notes = [f"flashinfer {getattr(flashinfer, '__version__', '?')}"]
    mods = [flashinfer] + [getattr(flashinfer, n) for n in ("gemm", "fused_moe")
                           if hasattr(flashinfer, n)]
    seen = set()
    for mod in mods:
        for name in dir(mod):
            low = name.lower()
            if name in seen or not any(s in low for s in ("groupwise", "contiguous",
                                                          "blockscale", "fp8_block")):
                continue
            seen.add(name)
            try:
                notes.append(f"{name}{inspect.signature(getattr(mod, name))}"[:300])
            except (TypeError, ValueError):
                notes.append(name)
    from flashinfer.fused_moe import cutlass_fused_moe

    i = w2.shape[2]
    out = torch.empty_like(x)
    ids32, twf = ids.to(torch.int32), tw.float()
    # TensorRT-LLM's fc1 holds the up rows first ("w31"); ours holds gate first.
    w31 = torch.cat([w13[:, i:], w13[:, :i]], 1)
    s31 = torch.cat([w13_s[:, i // 128:], w13_s[:, :i // 128]], 1)
    peers = {}
    for label, (wa, sa) in {"w31 order": (w31, s31), "w13 order": (w13, w13_s)}.items():
        def run(wa=wa, sa=sa):
            return cutlass_fused_moe(x, ids32, twf, wa, w2, torch.bfloat16,
                                     quant_scales=[sa, w2_s], output=out,
                                     use_deepseek_fp8_block_scale=True,
                                     tune_max_num_tokens=max(8192, x.shape[0]))
        peers[f"flashinfer cutlass_fused_moe fp8-block ({label})"] = run
    return peers, notes


def flashinfer_gemm_loop_peer(ids, w13, w13_s, w2, w2_s):
    """Per-expert loop of FlashInfer's sm_90 block-scale GEMM (fp8_blockscale_gemm_sm90)
    over pre-sorted random rows, GEMMs only (host-synchronising: it reads the counts)."""
    from flashinfer.gemm import fp8_blockscale_gemm_sm90 as gemm

    e, n13, h = w13.shape
    i = n13 // 2
    counts = torch.bincount(ids.reshape(-1), minlength=e).tolist()
    rows = sum(counts)
    fp8 = torch.float8_e4m3fn
    a = torch.randn(rows, h, device="cuda").to(fp8)
    a_s = torch.rand(rows, h // 128, device="cuda")
    act = torch.randn(rows, i, device="cuda").to(fp8)
    act_s = torch.rand(rows, i // 128, device="cuda")
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)

    def run():
        for ex in range(e):
            s, t = starts[ex], starts[ex + 1]
            if t > s:
                gemm(a[s:t], w13[ex], a_s[s:t], w13_s[ex])
                gemm(act[s:t], w2[ex], act_s[s:t], w2_s[ex])

    def check():
        # expert 0's gate/up rows against our own block GEMM
        from ds_plugin.kernels.fp8_gemm import fp8_block_gemm_nt
        from ds_plugin.kernels.fp8_format import calc_diff
        t = starts[1]
        return calc_diff(gemm(a[:t], w13[0], a_s[:t].contiguous(), w13_s[0]),
                         fp8_block_gemm_nt(a[:t], a_s[:t].contiguous(), w13[0], w13_s[0]))
    return run, check
