"""`ds-plugin precompile`: compile and autotune ds-plugin's Triton kernels for one model's
per-rank shapes into Triton's persistent cache, before the server takes traffic.

It runs the kernels the served model calls (block-FP8 GEMM and fused MoE for FP8
checkpoints, MLA decode for `--attention-backend CUSTOM`) once per shape that matters to
Triton's cache key and autotuner (ds_plugin/cli/kernel_shapes.py). Only ds_plugin.kernels,
torch and Triton are imported, never vLLM, so it runs on a GPU box without vLLM.

Serve with the same TRITON_CACHE_DIR: vLLM otherwise points Triton at its per-model
torch.compile cache directory and compiles everything again there.

Without CUDA there is nothing to cache (Triton's cache holds GPU binaries); with
TRITON_INTERPRET=1 the same launches run on the CPU through Triton's interpreter, which
checks the calls for a small model (CI does) and caches nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ds_plugin.cli.kernel_shapes import PREFILL_TOKENS, Plan, PlanError, plan

__all__ = ["load_config", "tasks", "run_tasks"]


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="compile + autotune ds-plugin's Triton kernels for a model's "
                                  "shapes into Triton's persistent cache (CUDA; no vLLM needed)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="checkpoint directory or Hugging Face id (only config.json is read)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default: 1)")
    p.add_argument("--ep", action="store_true",
                   help="expert parallel over the tp ranks (vLLM --enable-expert-parallel)")
    p.add_argument("--num-speculative-tokens", type=int, default=0,
                   help="MTP draft tokens per step (decode verifies 1 + this many tokens)")
    p.add_argument("--max-model-len", type=int,
                   help="as served (sets MLA split counts; default: max_position_embeddings)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="as served: bf16 latent cache (auto) or fp8 (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=16,
                   help="KV cache page size as served (default: %(default)s, vLLM's)")
    p.add_argument("--max-batch", type=int, default=512,
                   help="largest CUDA-graph size in tokens (vLLM's default: %(default)s)")
    p.add_argument("--prefill-tokens", type=_sizes, default=PREFILL_TOKENS, metavar="M,M,...",
                   help="chunked-prefill token counts compiled beside the CUDA-graph sizes "
                        f"(default: {','.join(map(str, PREFILL_TOKENS))})")
    p.add_argument("--cache-dir", help="Triton cache directory (default: $TRITON_CACHE_DIR, "
                                       "else ~/.triton/cache)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=run)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token counts like 1000,2048, got {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive token counts, got {text!r}")
    return sizes


def load_config(model: str) -> dict:
    """config.json of a local checkpoint, or fetched from the Hugging Face Hub."""
    path = Path(model)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise PlanError(f"{model}: no config.json in this directory")
        return json.loads(cfg.read_text())
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PlanError(f"{model}: not a directory, and huggingface_hub is not installed to "
                        "fetch its config.json") from None
    try:
        return json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated: say which
        raise PlanError(f"{model}: cannot fetch config.json from the Hub ({type(e).__name__}: "
                        f"{e}); pass a local checkpoint directory") from None


def tasks(p: Plan, device) -> list[tuple[str, object]]:
    """(label, zero-argument callable) per kernel launch that warms one shape."""
    import torch

    from ds_plugin import kernels as K

    fp8 = torch.float8_e4m3fn
    g = torch.Generator(device=device).manual_seed(0)
    out: list[tuple[str, object]] = []

    def weight(*shape):
        return (torch.randn(*shape, device=device, generator=g) * 0.1).to(fp8)

    def scales(*shape):
        return torch.ones(*shape, device=device, dtype=torch.float32)

    if p.fp8:
        for gm in p.gemms:
            w, ws = weight(gm.n, gm.k), scales(-(-gm.n // 128), -(-gm.k // 128))

            def gemm(m, w=w, ws=ws, k=gm.k):
                a, a_s = K.fp8_act_quant(torch.randn(m, k, device=device, dtype=torch.bfloat16))
                K.fp8_block_gemm_nt(a, a_s, w, ws)
            out += [(f"fp8 gemm {gm.name} N={gm.n} K={gm.k} M={m}", (gemm, m)) for m in p.tokens]
        if p.moe is not None:
            mo = p.moe
            w13, w13_s = weight(mo.experts, 2 * mo.intermediate, mo.hidden), scales(
                mo.experts, -(-2 * mo.intermediate // 128), -(-mo.hidden // 128))
            w2, w2_s = weight(mo.experts, mo.hidden, mo.intermediate), scales(
                mo.experts, -(-mo.hidden // 128), -(-mo.intermediate // 128))

            def moe(m):
                x = torch.randn(m, mo.hidden, device=device, dtype=torch.bfloat16)
                ids = torch.randint(0, mo.experts, (m, mo.top_k), device=device, generator=g)
                wts = torch.rand(m, mo.top_k, device=device, generator=g)
                K.fp8_fused_moe(x, wts, ids.to(torch.int32), w13, w13_s, w2, w2_s)
            out += [(f"fp8 moe E={mo.experts} I={mo.intermediate} M={m}", (moe, m))
                    for m in p.tokens]
    out += _mla_tasks(p, device, g)
    return out


def _mla_tasks(p: Plan, device, g) -> list[tuple[str, object]]:
    import torch

    from ds_plugin import kernels as K

    mla, q_len = p.mla, p.query_len
    # On CPU (Triton's interpreter) one fixed tile shape: the autotuner would benchmark on a
    # GPU driver. Splits sized as for an H200's 132 SMs, as ds_plugin's interpreted backend.
    cuda = device.type == "cuda"
    sms = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 132
    config = None if cuda else {"BLOCK_H": 16, "BLOCK_N": 16}
    dim = mla.rank + mla.rope
    seq = 2 * mla.page  # short cached sequences: the kernel's cache key ignores length

    def decode(batch, splits):
        q = torch.randn(batch, q_len, mla.heads, dim, device=device, dtype=torch.bfloat16)
        pages = -(-seq // mla.page)
        cache_dtype = torch.uint8 if mla.fp8_cache else torch.bfloat16
        cache = torch.zeros(batch * pages, mla.page, dim, device=device, dtype=cache_dtype)
        table = torch.arange(batch * pages, device=device, dtype=torch.int32).view(batch, pages)
        lens = torch.full((batch,), seq, device=device, dtype=torch.int32)
        k_scale = torch.ones(1, device=device) if mla.fp8_cache else None
        K.mla_decode(q, cache, table, lens, dim ** -0.5, mla.rank, k_scale=k_scale,
                     num_splits=splits, config=config)

    # Under CUDA-graph capture ds-plugin's backend sizes the split count for max_model_len.
    return [(f"mla decode heads={mla.heads} batch={b} q_len={q_len}",
             (decode, b, K.mla_decode_num_splits(b, q_len * mla.heads, mla.max_model_len, sms)))
            for b in p.decode_batches]


def _cache_files(cache_dir: Path) -> int:
    return sum(1 for _ in cache_dir.rglob("*")) if cache_dir.is_dir() else 0


def run_tasks(todo: list[tuple[str, object]], progress: bool = True) -> list[tuple[str, float]]:
    """Run every task once; returns (label, seconds) per task (compile + autotune + run)."""
    import torch

    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar = tqdm(todo, desc="precompile", unit="shape", disable=not progress) if tqdm else todo
    times = []
    for label, (fn, *args) in bar:
        t = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((label, time.perf_counter() - t))
    return times


def run(ns: argparse.Namespace) -> int:
    import torch

    interpreted = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available() and not interpreted:
        print("ds-plugin precompile: no CUDA device (torch.cuda.is_available() is False); "
              "Triton's persistent cache holds GPU binaries, so there is nothing to compile "
              "here. Run it on the serving machine (TRITON_INTERPRET=1 only checks the "
              "kernel calls on the CPU).", file=sys.stderr)
        return 2
    if interpreted:
        print("ds-plugin precompile: no CUDA device and TRITON_INTERPRET=1: running the launches "
              "through Triton's interpreter to check them (slow: small models only; nothing "
              "is cached)", file=sys.stderr)
    cache = Path(ns.cache_dir or os.environ.get("TRITON_CACHE_DIR")
                 or Path.home() / ".triton" / "cache").expanduser()
    # Before ds_plugin.kernels is imported: Triton's autotuner reads both when it is built.
    os.environ["TRITON_CACHE_DIR"] = str(cache)
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    try:
        p = plan(load_config(ns.model), tp=ns.tp, ep=ns.ep,
                 spec_tokens=ns.num_speculative_tokens, max_capture=ns.max_batch,
                 page=ns.block_size, fp8_cache=ns.kv_cache_dtype == "fp8",
                 max_model_len=ns.max_model_len, prefill=ns.prefill_tokens)
    except PlanError as e:
        print(f"ds-plugin precompile: {e}", file=sys.stderr)
        return 1
    before = _cache_files(cache)
    t0 = time.perf_counter()
    device = torch.device("cpu") if interpreted else torch.device("cuda", 0)
    times = run_tasks(tasks(p, device), progress=not ns.json)
    total = time.perf_counter() - t0
    slow = sorted(times, key=lambda lt: -lt[1])[:5]
    summary = {"model": ns.model, "tp": ns.tp, "ep": ns.ep, "fp8_checkpoint": p.fp8,
               "device": ("CPU, Triton interpreter (calls checked, nothing cached)"
                          if interpreted else torch.cuda.get_device_name(0)),
               "shapes": len(times),
               "seconds": round(total, 1), "cache_dir": str(cache),
               "new_cache_files": _cache_files(cache) - before,
               "slowest": [{"shape": lbl, "seconds": round(s, 2)} for lbl, s in slow]}
    if ns.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"precompiled {len(times)} shapes of {ns.model} (tp {ns.tp}{', ep' if ns.ep else ''}"
          f"{'' if p.fp8 else '; bf16 checkpoint: MLA decode only'}) on "
          f"{summary['device']} in {total:.1f} s; {summary['new_cache_files']} new files in "
          f"{cache}")
    for lbl, s in slow:
        print(f"  {s:7.2f} s  {lbl}")
    if interpreted:
        return 0
    print(f"serve with TRITON_CACHE_DIR={cache} so vLLM's processes read this cache "
          "(vLLM keeps TRITON_CACHE_AUTOTUNING=1, which reuses the autotuner's picks)")
    return 0
