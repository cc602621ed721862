"""W4A8 grouped GEMM variants compiled for sm_90 without a GPU: registers, spills, shared
memory, occupancy and the SASS of the K loop (instructions per 128-wide K group, load widths,
barriers, MMA waits), beside our FP8 grouped GEMM's loop. For reading a variant before the
H200 times it (benchmarks/bench_w4a8_moe.py).

    pip install --target /tmp/t36 triton==3.6.0   # the H200 machine's Triton
    PYTHONPATH=/tmp/t36:. python benchmarks/sass_w4a8_moe.py [--dump DIR]

Shapes: DeepSeek-V3 gate/up (N 4096 or the fused 2 x 2048, K 7168) and down (N 7168, K
2048) with 16-row expert blocks (decode) or 64 (bm64), static activation scales.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ds_plugin.kernels.fp8_moe import _grouped_gemm_kernel as fp8_kernel
from ds_plugin.kernels.w4a8_gemm import _w4a8_gemm_kernel as w4_kernel
from ds_plugin.kernels.w4a8_moe import NAMED_TILES

H, I = 7168, 2048
BIN = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
SMEM_PER_SM = 228 * 1024


def _compile(fn, vals, consts, warps, stages):
    sig, attrs, consts = {}, {}, dict(consts)
    for i, a in enumerate(fn.arg_names):
        if a in consts:
            sig[a] = "constexpr"
            continue
        v = vals[a]
        if isinstance(v, int) and v == 1:  # Triton specialises 1 as a constant
            sig[a], consts[a] = "constexpr", 1
            continue
        sig[a] = "i32" if isinstance(v, int) else v
        if isinstance(v, str) or v % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))


def compile_w4(gemm: str, tile, bm: int, fused=False, perm=False):
    n, k = {"gate_up": (2 * I if not fused else I, H), "down": (H, I)}[gemm]
    vals = dict(a_ptr="*fp8e4nv", as_ptr="*fp32", w_ptr="*i8", ws_ptr="*fp32",
                c_ptr="*fp8e4nv" if fused else "*bf16", sorted_ptr="*i32",
                block_expert_ptr="*i32", topk_w_ptr="*fp32", qs_ptr="*fp32", N=n, K=k,
                num_pairs=8, a_row_div=8 if gemm == "gate_up" else 1, stride_am=k,
                stride_asm=0, stride_we=(2 * n if fused else n) * k // 2, stride_wn=k // 2,
                stride_wse=(2 * n if fused else n) * k // 128, stride_wsn=k // 128,
                stride_wsk=1, stride_cm=n)
    consts = dict(BLOCK_M=bm, BLOCK_N=tile.block_n, SWAP_AB=tile.swap_ab, STATIC_A=True,
                  MUL_WEIGHT=gemm == "down", ASM=True, GROUPS=tile.groups, EVEN_N=True,
                  A_PERM=perm, FUSE=fused, TILED=tile.tiled)
    return _compile(w4_kernel, vals, consts, tile.num_warps, tile.num_stages)


def compile_fp8(gemm: str, bm: int, block_n=64, warps=4, stages=4):
    n, k = {"gate_up": (2 * I, H), "down": (H, I)}[gemm]
    vals = dict(a_ptr="*fp8e4nv", as_ptr="*fp32", w_ptr="*fp8e4nv", ws_ptr="*fp32",
                c_ptr="*bf16", sorted_ptr="*i32", block_expert_ptr="*i32", topk_w_ptr="*fp32",
                N=n, K=k, num_pairs=8, a_row_div=8 if gemm == "gate_up" else 1, stride_am=k,
                stride_asm=k // 128, stride_we=n * k, stride_wn=k,
                stride_wse=(n // 128) * (k // 128), stride_wsn=k // 128, stride_cm=n)
    consts = dict(BLOCK_M=bm, BLOCK_N=block_n, BLOCK_K=128, MUL_WEIGHT=gemm == "down")
    return _compile(fp8_kernel, vals, consts, warps, stages)


def _sass(kernel) -> tuple[str, str]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", f.name], capture_output=True,
                             text=True).stdout
        sass = subprocess.run([f"{BIN}/cuobjdump", "-sass", f.name], capture_output=True,
                              text=True).stdout
    return res, sass


def main_loop(sass: str) -> list[str]:
    """The instructions of the innermost loop with MMAs (the K loop), target to branch."""
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in
           re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    best: list[str] = []
    for addr, text in ins:
        m = re.search(r"BRA (0x[0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
            has_mma = any("GMMA" in t or "HMMA" in t for t in body)
            if has_mma and (not best or len(body) < len(best)):
                best = body
    return best


def report(name: str, kernel, warps: int, k_per_iter: int, w_bytes_per_stage: int,
           stages: int) -> dict:
    res, sass = _sass(kernel)
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", res)
    regs, stack = int(m.group(1)), int(m.group(2))
    smem = kernel.metadata.shared
    threads = 32 * warps
    regs_alloc = -(-regs // 8) * 8
    ctas = min(65536 // (regs_alloc * threads), SMEM_PER_SM // (smem + 1024), 2048 // threads, 32)
    loop = main_loop(sass)
    ops = [t.split()[0] if not t.startswith("@") else t.split()[1] for t in loop]

    def count(*prefixes):
        return sum(1 for o in ops if o.startswith(prefixes))
    groups = k_per_iter // 128
    row = dict(
        name=name, regs=regs, stack=stack, smem_kb=smem // 1024, ctas_per_sm=ctas,
        loop_instr=len(loop), per_group=len(loop) / groups,
        per_kb_weights=1024 * len(loop) * warps / (w_bytes_per_stage or 1),
        cvt=count("LOP3", "HADD2", "HFMA2", "PRMT", "SHF") / groups,
        ldgsts128=count("LDGSTS.E.BYPASS.128", "LDGSTS.E.128"),
        ldgsts_small=count("LDGSTS") - count("LDGSTS.E.BYPASS.128", "LDGSTS.E.128"),
        ldg=count("LDG.E"), lds=count("LDS", "LDSM"), bar=count("BAR.SYNC"),
        mma=count("QGMMA", "HGMMA", "HMMA"), mma_wait=count("WARPGROUP.DEPBAR"),
        inflight_kb=ctas * (stages - 1) * w_bytes_per_stage / 1024)
    return row


def fmt(r: dict) -> str:
    return (f"{r['name']:<34} regs {r['regs']:>3} stack {r['stack']:>3} smem {r['smem_kb']:>3}K "
            f"cta/SM {r['ctas_per_sm']:>2} | loop {r['loop_instr']:>4} = "
            f"{r['per_group']:>5.0f}/group {r['per_kb_weights']:>5.0f} warp-instr/KB-w "
            f"(cvt {r['cvt']:>4.0f}/group) | "
            f"LDGSTS 16B {r['ldgsts128']:>2} small {r['ldgsts_small']:>2} LDG {r['ldg']:>2} "
            f"LDS {r['lds']:>2} BAR {r['bar']} MMA {r['mma']:>2} wait {r['mma_wait']} | "
            f"w in flight/SM {r['inflight_kb']:>4.0f} KB")


# bench_w4a8_moe's named sets (the uniform ones: each names one tile for both GEMMs)
W4_VARIANTS = [(name, t.gate_up, t.fused, t.perm) for name, t in NAMED_TILES.items()
               if t.gate_up == t.down]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dump", help="write each variant's SASS here")
    p.add_argument("--bm", type=int, nargs="+", default=[16, 64])
    p.add_argument("--only", nargs="+", help="these NAMED_TILES only")
    ns = p.parse_args()
    print(f"# triton {triton.__version__}, sm_90, static scales; per_group = loop instructions "
          f"per 128-K group per thread; warp-instr/KB-w = per KB of int4 weights per CTA")
    for bm in ns.bm:
        print(f"\n## {bm}-row expert blocks")
        for gemm in ("gate_up", "down"):
            k = compile_fp8(gemm, bm)
            print(fmt(report(f"fp8 {gemm} n64 s4", k, 4, 128, 64 * 128, 4)))
            jobs = [(lbl, t, fused and gemm == "gate_up", pm)
                    for lbl, t, fused, pm in W4_VARIANTS if not ns.only or lbl in ns.only]
            for lbl, t, fused, perm in jobs:
                try:
                    k = compile_w4(gemm, t, bm, fused, perm)
                except Exception as e:  # noqa: BLE001 - report the variant and go on
                    print(f"w4 {gemm} {lbl}: compile failed: {str(e).splitlines()[0][:120]}")
                    continue
                wb = t.block_n * 64 * t.groups * (2 if fused else 1)
                r = report(f"w4 {gemm} {lbl}", k, t.num_warps, 128 * t.groups, wb, t.num_stages)
                print(fmt(r), flush=True)
                if ns.dump:
                    os.makedirs(ns.dump, exist_ok=True)
                    tag = re.sub(r"[^a-z0-9]+", "_", f"{gemm}_{lbl}_bm{bm}")
                    with open(os.path.join(ns.dump, tag + ".sass"), "w") as f:
                        f.write(_sass(k)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
