"""First-call latency of DeepSeek-V3's served kernel shapes, cold vs after `ds-plugin precompile`.

    python benchmarks/bench_precompile.py [--tp 8] [--ep] [--max-batch 512] [--prefill-tokens 8192]

Needs a CUDA GPU, torch and Triton; not vLLM. It writes DeepSeek-V3's released config.json
(the fields the shapes depend on) to a temporary directory, then:
  1. cold: a fresh process, an empty Triton cache, times the first call of each sampled
     served shape (compile + autotune + run) and a second call (steady state);
  2. runs `ds-plugin precompile` for that config into the same cache (timed);
  3. warm: a fresh process on that cache times the same first and second calls.
One table: shape, cold first call, warm first call, steady call, ms; and the precompile time.
Each measurement runs in its own process so Triton's in-memory caches do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
V3_CONFIG = {
    "model_type": "deepseek_v3", "hidden_size": 7168, "num_attention_heads": 128,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "first_k_dense_replace": 3, "max_position_embeddings": 163840,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                            "activation_scheme": "dynamic", "fmt": "e4m3"}}
# Served shapes sampled for the table: decode batch sizes and one chunked-prefill size.
SAMPLE_TOKENS = (1, 8, 64, 256, 8192)
SAMPLE_GEMMS = ("fused_qkv_a_proj", "q_b_proj", "o_proj", "shared_experts.gate_up_proj")


def _measure(args: argparse.Namespace) -> None:
    """Child process: time first and second calls of the sampled shapes (JSON on stdout)."""
    import torch

    from ds_plugin.cli.kernel_shapes import plan
    from ds_plugin.cli.precompile import tasks

    p = plan(V3_CONFIG, tp=args.tp, ep=args.ep, max_capture=args.max_batch,
             prefill=_prefill(args))
    todo = [(label, t) for label, t in tasks(p, torch.device("cuda", 0))
            if _sampled(label)]
    rows = []
    for label, (fn, *a) in todo:
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn(*a)
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - t))
        rows.append({"shape": label, "first_ms": times[0], "second_ms": times[1]})
    print(json.dumps(rows))


def _prefill(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(t) for t in args.prefill_tokens.split(","))


def _run(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed (status {out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def _sampled(label: str) -> bool:
    m = label.rsplit("M=", 1)
    if label.startswith("fp8 gemm"):
        return any(f" {g} " in label for g in SAMPLE_GEMMS) and int(m[1]) in SAMPLE_TOKENS
    if label.startswith("fp8 moe"):
        return int(m[1]) in SAMPLE_TOKENS
    batch = int(label.split("batch=")[1].split()[0])
    return batch in SAMPLE_TOKENS


def _child(args: argparse.Namespace, cache: Path) -> list[dict]:
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "TRITON_CACHE_AUTOTUNING": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, __file__, "--measure", "--tp", str(args.tp),
           "--max-batch", str(args.max_batch), "--prefill-tokens", args.prefill_tokens] + (
        ["--ep"] if args.ep else [])
    return json.loads(_run(cmd, env).strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tp", type=int, default=8, help="tensor-parallel size (default 8)")
    ap.add_argument("--ep", action="store_true", help="expert parallel over the tp ranks")
    ap.add_argument("--max-batch", type=int, default=512,
                    help="largest CUDA-graph size precompiled (vLLM's default 512)")
    ap.add_argument("--prefill-tokens", default="1000,2048,8192",
                    help="chunked-prefill token counts precompiled (default 1000,2048,8192)")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return _measure(args)
    with tempfile.TemporaryDirectory(prefix="ds-precompile-") as tmp:
        model, cache = Path(tmp) / "model", Path(tmp) / "triton"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(V3_CONFIG))
        cold = _child(args, cache / "cold")
        t = time.perf_counter()
        pre = _run([sys.executable, "-m", "ds_plugin.cli", "precompile", "--model", str(model),
                    "--tp", str(args.tp), "--max-batch", str(args.max_batch), "--prefill-tokens",
                    args.prefill_tokens, "--cache-dir", str(cache / "warm"), "--json"]
                   + (["--ep"] if args.ep else []), {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
                   | {"PYTHONPATH": str(ROOT)})
        pre_s = time.perf_counter() - t
        summary = json.loads(pre)
        warm = _child(args, cache / "warm")
    print(f"DeepSeek-V3 FP8, tp {args.tp}{' ep' if args.ep else ''}, max batch "
          f"{args.max_batch}, prefill {args.prefill_tokens}, {summary['device']}: "
          f"precompile {summary['shapes']} shapes in {pre_s:.1f} s "
          f"({summary['new_cache_files']} cache files)")
    print(f"{'shape':58} {'cold 1st ms':>12} {'warm 1st ms':>12} {'steady ms':>10}")
    for c, w in zip(cold, warm, strict=True):
        print(f"{c['shape']:58} {c['first_ms']:12.1f} {w['first_ms']:12.1f} {w['second_ms']:10.3f}")
    print(f"{'total first calls':58} {sum(c['first_ms'] for c in cold):12.1f} "
          f"{sum(w['first_ms'] for w in warm):12.1f}")


if __name__ == "__main__":
    main()
