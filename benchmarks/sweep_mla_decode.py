"""MLA decode kernel variants side by side at the issue-15 grid points, each checked before timing.

Grid: 16 and 128 query heads x batch {1, 32, 128} x context {4k, 32k} x BF16 / FP8 latent cache
(576 values per token, pages of 64, one query token). Variants are fixed configs of
`ds_plugin.kernels.mla_decode` (no autotuning), named in VARIANTS: tile shape, warps, pipeline
stages, one block-table load per tile ("p", paged tile) or one per row ("r", the old gather), and
for FP8 how e4m3 becomes the MMA operand (ds_plugin/kernels/mla_tiles.py; here by default int32
words converted by the hardware converter; "c2": the same words by integer ops; "c0": Triton's
cast). Every variant is first checked against the fp32 reference (`ref_mla_decode`, ragged lengths,
NaN outside the sequences) with the kernel tests' bf16-unit tolerance, in parallel worker
processes that also compile the kernels the timing uses; a variant that fails is reported and not
timed. Times are medians of CUDA-graph replays, each replay walking enough disjoint page sets to
read >= 256 MB so caches are not served from L2. FlashInfer (`fa3`, `fa2`) is timed beside ours
when `flashinfer` imports. benchmarks/bench_mla_decode.py times the shipped default.

  PYTHONPATH=. python benchmarks/sweep_mla_decode.py [--quick] [--no-flashinfer]
  PYTHONPATH=. python benchmarks/sweep_mla_decode.py --ptxas   # sm_90 registers/spills, no GPU
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from _mla_common import (BYTES_MODEL, DIM, PAGE, RANK, ROPE, ceilings, flashinfer_backends, flashinfer_runner,
                         time_graph)

DEVICE = "cuda"  # the checks also run on "cpu" under TRITON_INTERPRET=1 (smoke test of this script)


def _cfg(bh, bn, warps, stages, paged=True, cvt=4, tma=False):
    return dict(BLOCK_H=bh, BLOCK_N=bn, num_warps=warps, num_stages=stages, PAGED_TILE=paged,
                FP8_CVT=cvt, TMA=tma)


def _set_allocator():
    # Device-side tensor descriptors (the TMA variants) keep their 128-byte descriptors in
    # global scratch that the launcher allocates through this hook.
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=DEVICE))


# name -> (heads it runs at, config, split multiplier). "old" is the config the previous H200 run
# picked; "...s2" keeps one stage too few for a second tile buffer (the pipeline ablation); "t" is
# the TMA variant; "x2" / "h" double / halve the split count of the policy.
VARIANTS = {
    "old16": ((16,), _cfg(16, 64, 8, 2, paged=False, cvt=0), 1),
    "p16x32s5": ((16,), _cfg(16, 32, 8, 5), 1),
    "p16x64s5": ((16, 128), _cfg(16, 64, 8, 5), 1),
    "p16x32s5w4": ((16,), _cfg(16, 32, 4, 5), 1),
    "p16x64s2": ((16,), _cfg(16, 64, 8, 2), 1),
    "r16x64s5": ((16,), _cfg(16, 64, 8, 5, paged=False), 1),
    "p16x32s5c0": ((16,), _cfg(16, 32, 8, 5, cvt=0), 1),
    "p16x32s5c2": ((16,), _cfg(16, 32, 8, 5, cvt=2), 1),
    "p16x32s5x2": ((16,), _cfg(16, 32, 8, 5), 2),
    "p16x32s5h": ((16,), _cfg(16, 32, 8, 5), 0.5),
    "t16x32s5": ((16,), _cfg(16, 32, 8, 5, tma=True), 1),
    "old128": ((128,), _cfg(64, 32, 8, 2, paged=False, cvt=0), 1),
    "p64x32s5": ((128,), _cfg(64, 32, 8, 5), 1),
    "p64x16s5": ((128,), _cfg(64, 16, 8, 5), 1),
    "p32x32s5": ((128,), _cfg(32, 32, 8, 5), 1),
    "p64x32s5x2": ((128,), _cfg(64, 32, 8, 5), 2),
    "t64x16s5": ((128,), _cfg(64, 16, 8, 5, tma=True), 1),
    "t64x32s5": ((128,), _cfg(64, 32, 8, 5, tma=True), 1),
}


def kv_kinds(name):
    """A variant that changes only the e4m3 conversion is the same kernel on a bf16 cache."""
    cfg = VARIANTS[name][1]
    old = cfg["FP8_CVT"] == 0 and not cfg["PAGED_TILE"]
    return ("fp8",) if cfg["FP8_CVT"] != 4 and not old else ("bf16", "fp8")


def num_splits(batch, heads, ctx, sms, mult):
    """The library's split policy scaled by `mult` (the sweep tries 1/2 and 2x; up to 128)."""
    from ds_plugin.kernels.mla_decode import mla_decode_num_splits

    return max(1, min(128, ctx // 128, round(mla_decode_num_splits(batch, heads, ctx, sms) * mult)))


# ---------------------------------------------------------------- correctness (worker processes)

def _poisoned_cache(seq_lens, fp8, gen, device):
    """Shuffled pages holding each sequence's latents, NaN elsewhere; (cache, table, k_scale)."""
    pages = [max(1, math.ceil(n / PAGE)) for n in seq_lens]
    # Block count, table width and split counts keep the timed shapes' divisibility by 16, so the
    # kernels compiled here are the ones the timing loads from Triton's cache.
    blocks = (sum(pages) + 2 + 15) // 16 * 16
    order = torch.randperm(blocks, generator=gen)
    table = torch.full((len(seq_lens), 80), 10**6, dtype=torch.int32)  # width % 16 == 0 like the grid
    cache = torch.full((blocks, PAGE, DIM), float("nan"))
    used = 0
    for b, n in enumerate(seq_lens):
        table[b, :pages[b]] = order[used:used + pages[b]].int()
        used += pages[b]
        pos = torch.arange(n)
        cache[table[b, pos // PAGE].long(), pos % PAGE] = torch.randn(n, DIM, generator=gen).bfloat16().float()
    k_scale = None
    if fp8:
        k_scale = torch.tensor([0.02])
        cache = (cache / k_scale).clamp(-448, 448).to(torch.float8_e4m3fn)  # NaN stays NaN
        k_scale = k_scale.to(device)
    else:
        cache = cache.bfloat16()
    return cache.to(device), table.to(device), k_scale


def check_variant(task):
    """(name, heads, kv) -> (name, heads, kv, worst err/bound, message). Runs splits 4 and 16."""
    name, heads, kv = task[:3]
    seq_lens = task[3] if len(task) > 3 else [1, 777, 4097, 64]
    try:
        from ds_plugin.kernels.mla_decode import mla_decode
        from ds_plugin.kernels.ref_mla import ref_mla_decode

        cfg = VARIANTS[name][1]
        _set_allocator()
        gen = torch.Generator().manual_seed(7)
        cache, table, k_scale = _poisoned_cache(seq_lens, kv == "fp8", gen, DEVICE)
        q = torch.randn(len(seq_lens), 1, heads, DIM, generator=gen).bfloat16().to(DEVICE)
        seq = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
        ref_out, ref_lse = ref_mla_decode(q, cache, table, seq, DIM**-0.5, RANK, k_scale)
        vmax = ref_gather_max(cache, k_scale)
        worst = 0.0
        for splits in (4, 16):
            out, lse = mla_decode(q, cache, table, seq, DIM**-0.5, RANK, k_scale=k_scale,
                                  num_splits=splits, config=cfg)
            if out.isnan().any() or lse.isnan().any():
                return name, heads, kv, float("inf"), f"NaN at splits {splits}"
            err = (out.float() - ref_out).abs()
            bound = 2 / 128 * ref_out.abs() + vmax / 256
            worst = max(worst, (err / bound).max().item())
            if not torch.allclose(lse, ref_lse, rtol=1e-5, atol=1e-5):
                return name, heads, kv, worst, f"lse off at splits {splits}"
        return name, heads, kv, worst, "ok" if worst <= 1.0 else "out of tolerance"
    except Exception as e:  # noqa: BLE001 - a variant that does not compile is reported, not timed
        return name, heads, kv, float("inf"), f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"


def ref_gather_max(cache, k_scale):
    finite = cache.float().nan_to_num(nan=0.0)
    return finite.abs().max().item() * (k_scale.item() if k_scale is not None else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch {1, 128} x context {32k} only")
    ap.add_argument("--no-flashinfer", action="store_true")
    ap.add_argument("--ptxas", action="store_true", help="compile every variant for sm_90, print registers")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    args = ap.parse_args()
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    if args.ptxas:
        return ptxas_report(names)
    t_start = time.time()
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    print(f"# {props.name}, {sms} SMs, torch {torch.__version__}, triton {triton.__version__}")
    # The first sweep (2026-12-02) timed a 2 GiB copy replayed from a CUDA graph: 2.69 TB/s, where
    # the eager copy reaches the card's 4.27; both are printed now, the eager one is the ceiling.
    ceil = ceilings()
    copy_bw = ceil["copy"]
    print(f"# copy {copy_bw / 1e12:.2f} TB/s (4 GiB eager copy, read + write counted; replayed from a "
          f"CUDA graph {ceil['copy_graph'] / 1e12:.2f}); {BYTES_MODEL}")

    tasks = [(n, h, kv) for n in names for h in VARIANTS[n][0] for kv in kv_kinds(n)]
    workers = min(len(tasks), max(1, (os.cpu_count() or 2) - 2), 12)
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(check_variant, tasks, chunksize=1)
    ok = set()
    print(f"# checks vs fp32 reference ({time.time() - t_start:.0f} s, {workers} workers): "
          "worst |err| / (2 ulp rel + vmax/256)")
    for name, heads, kv, worst, msg in results:
        print(f"#   {name:>12} H={heads:<3} {kv:4} {worst:6.3f} {msg}")
        if msg == "ok":
            ok.add((name, heads, kv))

    fi, why = ([], "--no-flashinfer") if args.no_flashinfer else flashinfer_backends()
    print(f"# FlashInfer: {', '.join(fi) if fi else 'not timed (' + why + ')'}")

    from ds_plugin.kernels.mla_decode import mla_decode

    _set_allocator()
    batches, contexts = ([1, 128], [32768]) if args.quick else ([1, 32, 128], [4096, 32768])
    blocks = max(batches) * max(contexts) // PAGE
    torch.manual_seed(0)
    cache_bf16 = torch.randn(blocks, PAGE, DIM, dtype=torch.bfloat16, device="cuda")
    k_scale = torch.tensor([cache_bf16.abs().amax().item() / 448], device="cuda")
    cache_fp8 = (cache_bf16.float() / k_scale).to(torch.float8_e4m3fn)
    summary = []
    for heads in (16, 128):
        vnames = [n for n in names if heads in VARIANTS[n][0]]
        print(f"\n## {heads} heads: µs per call (lower is better); best's GB/s on KV bytes, TFLOP/s")
        print(f"{'kv':>4} {'B':>4} {'ctx':>6} " + " ".join(f"{n:>11}" for n in vnames)
              + f" {'best':>11} {'GB/s':>6} {'TFLOP/s':>7}" + "".join(f" {b:>8}" for b in fi))
        for kv in ("bf16", "fp8"):
            cache = cache_bf16 if kv == "bf16" else cache_fp8
            for batch in batches:
                for ctx in contexts:
                    pages = ctx // PAGE
                    kv_bytes = batch * ctx * DIM * (2 if kv == "bf16" else 1)
                    flops = batch * heads * ctx * (2 * DIM + 2 * RANK)
                    n_rot = max(1, min(32, math.ceil(256e6 / kv_bytes), blocks // (batch * pages)))
                    perm = torch.randperm(blocks, device="cuda")[:n_rot * batch * pages]
                    tables = perm.view(n_rot, batch, pages).int()
                    seq = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
                    q = torch.randn(batch, 1, heads, DIM, dtype=torch.bfloat16, device="cuda")
                    out = torch.empty(batch, 1, heads, RANK, dtype=torch.bfloat16, device="cuda")
                    lse = torch.empty(batch, 1, heads, device="cuda")
                    ws = torch.empty(batch * heads * 128 * (RANK + 1), device="cuda")
                    cells, best = [], (float("inf"), "-")
                    for n in vnames:
                        if kv not in kv_kinds(n):
                            cells.append(f"{'=':>11}")
                            continue
                        if (n, heads, kv) not in ok:
                            cells.append(f"{'fail':>11}")
                            continue
                        cfg, mult = VARIANTS[n][1], VARIANTS[n][2]
                        splits = num_splits(batch, heads, ctx, sms, mult)

                        def ours(cfg=cfg, splits=splits):
                            for t in tables:
                                mla_decode(q, cache, t, seq, DIM**-0.5, RANK, k_scale=k_scale,
                                           num_splits=splits, out=out, lse=lse, workspace=ws, config=cfg)
                        try:
                            us = time_graph(ours)[0] / n_rot * 1e3
                        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory at this shape
                            cells.append(f"{'err':>11}")
                            print(f"# {n} at B={batch} ctx={ctx} {kv}: {type(e).__name__}: {str(e)[:160]}")
                            continue
                        cells.append(f"{us:>11.1f}")
                        best = min(best, (us, n))
                    line = f"{kv:>4} {batch:>4} {ctx:>6} " + " ".join(cells)
                    us = best[0]
                    line += f" {best[1]:>11} {kv_bytes / us / 1e3:>6.0f} {flops / us / 1e6:>7.1f}"
                    for b in fi:
                        try:
                            run, fo = flashinfer_runner(b, q, cache, tables, seq, DIM**-0.5,
                                                        k_scale if kv == "fp8" else None)
                            t_fi = time_graph(run)[0] / n_rot * 1e3
                            diff = (fo.float() - out.view_as(fo).float()).abs().max().item()
                            line += f" {t_fi:>8.1f}"
                            summary.append((heads, kv, batch, ctx, b, t_fi, us, diff))
                        except Exception as e:  # noqa: BLE001 - a peer that fails leaves its cell
                            line += f" {'err':>8}"
                            print(f"# {b} failed: {type(e).__name__}: {str(e)[:200]}")
                    print(line, flush=True)
    if summary:
        print("\n# FlashInfer vs our best (same card, same shapes): ratio = their µs / ours; max|diff| bf16")
        for heads, kv, batch, ctx, b, t_fi, us, diff in summary:
            print(f"#   H={heads:<3} B={batch:<3} ctx={ctx:<5} {b}: {t_fi:8.1f} µs vs {us:8.1f}  "
                  f"ratio {t_fi / us:5.2f}  max|diff| {diff:.2e}")
    print(f"# copy ceiling {copy_bw / 1e12:.2f} TB/s; total wall {time.time() - t_start:.0f} s")


# ---------------------------------------------------------------- ptxas (no GPU needed)

def ptxas_report(names) -> None:
    """Registers, local-memory stack, shared memory and instruction mix of each variant on sm_90."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ds_plugin.kernels.mla_decode import _mla_decode_part_kernel as fn

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    print(f"# triton {triton.__version__}, sm_90; stack > 0 means spills to local memory")
    for name in names:
        heads_set, cfg, _ = VARIANTS[name]
        for heads in heads_set:
            for kv in kv_kinds(name):
                cvt = cfg["FP8_CVT"] if kv == "fp8" else 0
                kvty = "*bf16" if kv == "bf16" else "*fp8e4nv"
                vals = dict(Q="*bf16", KV=kvty, BT="*i32", SEQ="*i32", KSCALE="*fp32", OP="*fp32",
                            LP="*fp32", O="*bf16", LSE="*fp32", sm_scale_log2="fp32",
                            stride_q_b=heads * DIM, stride_q_r=DIM, stride_kv_blk=PAGE * DIM,
                            stride_kv_tok=DIM, stride_bt_b=512, stride_op_b=heads * 16 * RANK,
                            stride_op_r=16 * RANK, stride_op_s=RANK, stride_lp_b=heads * 16,
                            stride_lp_r=16, stride_o_b=heads * RANK, stride_o_r=RANK, stride_lse_b=heads,
                            num_splits=16, work_hint=64, num_blocks=65536)
                consts = dict(ROWS=heads, HEADS=heads, S_Q=1, RANK=RANK, ROPE=ROPE, PAGE=PAGE,
                              FP8=kv == "fp8", DIRECT=False, DOT_F32=False, BLOCK_H=cfg["BLOCK_H"],
                              BLOCK_N=cfg["BLOCK_N"], PAGED_TILE=cfg["PAGED_TILE"], FP8_CVT=cvt,
                              TMA=cfg["TMA"])
                sig, attrs = {}, {}
                for i, a in enumerate(fn.arg_names):
                    if a in consts:
                        sig[a] = "constexpr"
                        continue
                    v = vals[a]
                    sig[a] = "i32" if isinstance(v, int) else v
                    if isinstance(v, str) and v.startswith("*") or isinstance(v, int) and v % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
                k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                   options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(k.asm["cubin"])
                    f.flush()
                    res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
                m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
                ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
                bufs = re.findall(r"local_alloc : \(\) -> !ttg.memdesc<(\d+)x\d+x(?:512xbf16|512xf16|128xi32)", ttgir)
                print(f"{name:>12} H={heads:<3} {kv:4} regs {m.group(1):>3} stack {m.group(2):>4} "
                      f"smem {k.metadata.shared // 1024:>3} KB tile-buffers {','.join(bufs) or '-':>3} "
                      f"cp.async {ptx.count('cp.async.cg') + ptx.count('cp.async.ca'):>3} "
                      f"ld.shared.b8 {ptx.count('ld.shared.b8') + ptx.count('ld.shared.u8'):>3} "
                      f"tma {ptx.count('cp.async.bulk.tensor'):>2} "
                      f"wgmma {ptx.count('wgmma.mma_async'):>3} mma.sync {ptx.count('mma.sync'):>3}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
