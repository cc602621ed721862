"""CPU serving: tokens/s and resident memory of ds_plugin's model vs vLLM's in-tree class on the
same bf16 checkpoint, and ours on its block-FP8 / INT8 twins vs ours on bf16.

    python benchmarks/bench_cpu_serving.py [--prompts 4] [--tokens 32] [--rounds 1]

A DeepSeek-V3-shaped checkpoint, small enough for a shared 2-core box but with experts that
outweigh the embeddings less badly than the test model's (hidden 1024, 16 experts of 512,
4 layers). Each run is its own process with the engine core in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0), so its VmRSS / VmHWM are the model's process; the KV cache
is fixed (kv_cache_memory_bytes) so memory differences are the weights and the code paths.
"params MB" is the served model's parameter bytes as loaded (after any dequantization).

Figures are relative: a shared machine, one process at a time, best of --rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RUNS = [  # (label, checkpoint kind, VLLM_PLUGINS)
    ("ours bf16", "bf16", None),
    ("in-tree bf16", "bf16", "none"),
    ("ours fp8", "fp8", None),
    ("in-tree fp8", "fp8", "none"),
    ("ours int8-channel", "int8-channel", None),
]


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    return float("nan")


def _child(args: argparse.Namespace) -> None:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=args.ckpt, dtype="bfloat16", max_model_len=1024, max_num_seqs=args.prompts,
              kv_cache_memory_bytes=256 << 20, seed=0, skip_tokenizer_init=True)
    load_s = time.perf_counter() - t0
    params_mb = llm.apply_model(lambda m: sum(p.numel() * p.element_size()
                                              for p in m.parameters()) / 2 ** 20)[0]
    cls = llm.apply_model(lambda m: type(m).__module__)[0]
    g = torch.Generator().manual_seed(0)
    prompts = [TokensPrompt(prompt_token_ids=torch.randint(100, 120000, (args.prompt_len,),
                                                           generator=g).tolist())
               for _ in range(args.prompts)]
    llm.generate(prompts[:1], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    t0 = time.perf_counter()
    llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0))
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = llm.generate(prompts, SamplingParams(max_tokens=args.tokens, temperature=0,
                                                ignore_eos=True))
    total_s = time.perf_counter() - t0
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    print("RESULT " + json.dumps({
        "prefill_tok_s": args.prompts * args.prompt_len / prefill_s,
        "decode_tok_s": (generated - args.prompts) / max(total_s - prefill_s, 1e-9),
        "rss_mb": _status("VmRSS"), "peak_rss_mb": _status("VmHWM"), "params_mb": params_mb,
        "load_s": load_s, "module": cls}), flush=True)


def _run(ckpt: str, plugins: str | None, args: argparse.Namespace) -> dict:
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    cmd = [sys.executable, __file__, "--child", "--ckpt", ckpt, "--prompts", str(args.prompts),
           "--tokens", str(args.tokens), "--prompt-len", str(args.prompt_len)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within --run-timeout {args.run_timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail)[-300:]}


def _config():
    from ds_plugin.testing.checkpoint import TinyConfig

    return TinyConfig(hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512,
                      num_hidden_layers=4, n_routed_experts=16, num_experts_per_tok=4,
                      n_group=4, topk_group=2, num_attention_heads=8, q_lora_rank=256,
                      logit_peak=1.0, n_shards=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--run-timeout", type=float, default=300.0,
                    help="seconds one engine run may take (load, warm-up, measurement)")
    ap.add_argument("--only", default=None, help="comma-separated labels of RUNS to run")
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    from ds_plugin.testing.checkpoint import write_checkpoint

    runs = [r for r in RUNS if args.only is None or r[0] in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="ds_cpu_bench_") as tmp:
        ckpts = {kind: str(write_checkpoint(f"{tmp}/{kind}", _config(), quant=kind))
                 for kind in {k for _, k, _ in runs}}
        print(f"{args.prompts} prompts x {args.prompt_len} tokens, {args.tokens} generated "
              f"each, best of {args.rounds}; relative figures on a shared CPU box")
        print("| run | prefill tok/s | decode tok/s | params MB | VmRSS MB | VmHWM MB | load s | "
              "model module |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        # A row as soon as its runs finish, so a time limit keeps the rows already measured.
        for label, kind, plugins in runs:
            r = None
            for _ in range(args.rounds):
                got = _run(ckpts[kind], plugins, args)
                if r is None or "error" in r or ("error" not in got
                                                 and got["decode_tok_s"] > r["decode_tok_s"]):
                    r = got
            if "error" in r:
                print(f"| {label} | failed: {r['error']} | | | | | | |", flush=True)
                continue
            print(f"| {label} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
                  f"{r['params_mb']:.0f} | {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['load_s']:.0f} | {r['module']} |", flush=True)


if __name__ == "__main__":
    main()
