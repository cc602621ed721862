"""Shared pieces of the MLA decode benchmarks: ceilings, graph timing, FlashInfer as the peer."""

from __future__ import annotations

import torch

RANK, ROPE, PAGE = 512, 64, 64
DIM = RANK + ROPE
BYTES_MODEL = ("GB/s = KV cache bytes read (batch x context x 576 x 2 bf16 / 1 fp8) / time; "
               "copy = (read + write) bytes of a device-to-device copy / time")


def _median_ms(fn, reps: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def ceilings(copy_gib: int = 4) -> dict[str, float]:
    """Measured here: copy bandwidth (B/s, read + write counted) of a `copy_gib` GiB eager
    device-to-device copy (far past the 50 MB L2), the same copy replayed from a CUDA graph, and
    the bf16 8192^3 matmul rate (FLOP/s)."""
    src = torch.empty(copy_gib << 30, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    moved = 2 * src.numel()
    copy_bw = moved / (_median_ms(lambda: dst.copy_(src)) * 1e-3)
    graph_bw = moved / (time_graph(lambda: dst.copy_(src), replays=10)[0] * 1e-3)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm = 2 * 8192**3 / (_median_ms(lambda: a @ b) * 1e-3)
    return {"copy": copy_bw, "copy_graph": graph_bw, "mm": mm}


def time_graph(fn, replays: int = 20) -> tuple[float, bool]:
    """(median ms of one `fn()` from CUDA-graph replays, True), or timed eagerly (False) when
    capture fails."""
    fn()
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            fn()
            with torch.cuda.graph(g, stream=s):
                fn()
        run, graphed = g.replay, True
    except Exception:  # noqa: BLE001 - a peer path that refuses capture is timed eagerly
        torch.cuda.synchronize()
        run, graphed = fn, False
    torch.cuda.synchronize()
    return _median_ms(run, reps=replays, warmup=1), graphed


def flashinfer_backends() -> tuple[list[str], str]:
    """(["fa3", "fa2"], "") when flashinfer.mla imports, else ([], why not)."""
    try:
        import flashinfer.mla  # noqa: F401
    except Exception as e:  # noqa: BLE001 - absent or broken: reported, not timed
        return [], f"{type(e).__name__}: {e}"
    return ["fa3", "fa2"], ""


def flashinfer_runner(backend: str, q: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor,
                      seq: torch.Tensor, scale: float, k_scale: torch.Tensor | None):
    """FlashInfer 0.7.2's MLA decode over the same pages, one planned wrapper per page set.

    The call form the H200 ran on 2026-12-02 (ds_plugin/attention adapters of the mla-backends
    branch): keyword `plan(metadata=MLAPlanMetadata.csr(...))` and `run(query=, kv_cache=)` on the
    packed 576-wide query and cache, FP8 scale as floats. q [B, 1, H, 576]; cache [blocks, PAGE,
    576] bf16 or fp8 e4m3; tables [n_rot, B, pages] int32 (every sequence fills its pages).
    Returns (run, out): run() decodes every page set into `out` [B, H, 512] (the last set's stays).
    """
    from flashinfer.mla import BatchMLAPagedAttentionWrapper, MLAPlanMetadata

    batch, _, heads, _ = q.shape
    dev = q.device
    query = q[:, 0].contiguous()
    qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    scales = {} if k_scale is None else {"ckv_scale": float(k_scale), "kpe_scale": float(k_scale)}
    wrappers = []
    for t in tables:
        # A wrapper keeps its plan in its workspace: one each.
        ws = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
        w = BatchMLAPagedAttentionWrapper(ws, backend=backend)
        pages = t.shape[1]
        w.plan(metadata=MLAPlanMetadata.csr(qo_indptr, qo_indptr * pages, t.reshape(-1).contiguous(), seq),
               num_heads=heads, head_dim_ckv=RANK, head_dim_kpe=ROPE, page_size=PAGE, causal=True,
               sm_scale=scale, q_data_type=q.dtype, kv_data_type=cache.dtype, lse_mode="basee")
        wrappers.append(w)
    out = torch.empty(batch, heads, RANK, dtype=q.dtype, device=dev)
    lse = torch.empty(batch, heads, dtype=torch.float32, device=dev)

    def run():
        for w in wrappers:
            w.run(query=query, kv_cache=cache, out=out, lse=lse, return_lse=True,
                  return_lse_base_on_e=True, **scales)
    return run, out


def flashinfer_warm(task: tuple[str, str]) -> tuple[str, str, str]:
    """Worker: JIT-build one FlashInfer module (backend, kv dtype) on a tiny problem, so the timed
    process finds it built. Returns (backend, kv, "ok" or the error)."""
    backend, kv = task
    try:
        cache = torch.randn(4, PAGE, DIM, device="cuda").to(torch.bfloat16)
        k_scale = None
        if kv == "fp8":
            k_scale = torch.tensor([0.05], device="cuda")
            cache = (cache.float() / k_scale).to(torch.float8_e4m3fn)
        q = torch.randn(1, 1, 16, DIM, device="cuda").to(torch.bfloat16)
        tables = torch.zeros(1, 1, 1, dtype=torch.int32, device="cuda")
        seq = torch.full((1,), PAGE, dtype=torch.int32, device="cuda")
        run, _ = flashinfer_runner(backend, q, cache, tables, seq, DIM**-0.5, k_scale)
        run()
        torch.cuda.synchronize()
        return backend, kv, "ok"
    except Exception as e:  # noqa: BLE001 - reported; the timed process then reports its own
        return backend, kv, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
