"""Shared pieces of the MLA decode benchmarks: graph timing and FlashInfer as the peer."""

from __future__ import annotations

import torch

RANK, ROPE, PAGE = 512, 64, 64
DIM = RANK + ROPE


def time_graph(fn, replays: int = 20) -> float:
    """Median ms of one `fn()` from CUDA-graph replays (eager if capture fails)."""
    fn()
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            fn()
            with torch.cuda.graph(g, stream=s):
                fn()
        run = g.replay
    except Exception:  # noqa: BLE001 - a peer path that refuses capture is timed eagerly
        torch.cuda.synchronize()
        run = fn
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def flashinfer_backends() -> tuple[list[str], str]:
    """(["fa3", "fa2"], "") when flashinfer imports, else ([], why not)."""
    try:
        import flashinfer  # noqa: F401
    except Exception as e:  # noqa: BLE001 - absent or broken: reported, not timed
        return [], f"{type(e).__name__}: {e}"
    return ["fa3", "fa2"], ""


def flashinfer_runner(backend: str, q: torch.Tensor, ckv: torch.Tensor, kpe: torch.Tensor,
                      tables: torch.Tensor, seq: torch.Tensor, heads: int):
    """FlashInfer's MLA decode over the same pages, one planned wrapper per page set.

    q [B, 1, H, 576]; ckv [blocks, PAGE, 512] and kpe [blocks, PAGE, 64] (its layout: the latent
    and rope parts as two tensors); tables [n_rot, B, pages] int32. Returns (run, out): run()
    decodes every page set into `out` [B, H, 512] (the last set's result stays there).
    """
    import flashinfer

    ws = torch.empty(128 * 1024 * 1024, dtype=torch.int8, device=q.device)
    batch = q.shape[0]
    qn, qp = q[:, 0, :, :RANK].contiguous(), q[:, 0, :, RANK:].contiguous()
    wrappers = []
    for t in tables:
        w = flashinfer.mla.BatchMLAPagedAttentionWrapper(ws, backend=backend)
        pages = t.shape[1]
        w.plan(qo_indptr=torch.arange(batch + 1, dtype=torch.int32, device=q.device),
               kv_indptr=torch.arange(batch + 1, dtype=torch.int32, device=q.device) * pages,
               kv_indices=t.reshape(-1).contiguous(), kv_len_arr=seq, num_heads=heads,
               head_dim_ckv=RANK, head_dim_kpe=ROPE, page_size=PAGE, causal=False,
               sm_scale=DIM**-0.5, q_data_type=q.dtype, kv_data_type=ckv.dtype)
        wrappers.append(w)
    out = torch.empty(batch, heads, RANK, dtype=q.dtype, device=q.device)

    def run():
        for w in wrappers:
            w.run(qn, qp, ckv, kpe, out=out)
    return run, out
