"""Tokens/s of vLLM serving ds_plugin's DeepseekV3ForCausalLM vs vLLM's in-tree class.

    python benchmarks/bench_model_throughput.py [--ckpt DIR] [--prompts 8] [--tokens 64]

Same tiny checkpoint (written here unless --ckpt), same prompts, same engine settings; one
engine per implementation, each in a child process (vLLM reads VLLM_PLUGINS when its engine
processes start, so that is how the in-tree class gets served), one timed run after a warm-up
request. Prints prefill and decode throughput side by side and our/in-tree ratio (goal >= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _child(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import torch

    llm = LLM(model=args.ckpt, dtype="bfloat16", max_model_len=1024, max_num_seqs=args.prompts,
              gpu_memory_utilization=0.15, seed=0, skip_tokenizer_init=True,
              tensor_parallel_size=args.tp)
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
        # Decode rate: the end-to-end run minus its prefill, per generated token.
        "decode_tok_s": (generated - args.prompts) / max(total_s - prefill_s, 1e-9),
        "e2e_tok_s": generated / total_s,
    }), flush=True)


def _run(impl: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if impl == "in_tree":
        env["VLLM_PLUGINS"] = "none"
    cmd = [sys.executable, __file__, "--child", "--ckpt", args.ckpt, "--prompts",
           str(args.prompts), "--tokens", str(args.tokens), "--prompt-len", str(args.prompt_len),
           "--tp", str(args.tp)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{impl} run failed:\n{proc.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="checkpoint dir (default: write a tiny one)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="alternating ours/in-tree pairs")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    if args.ckpt is None:
        from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

        with tempfile.TemporaryDirectory(prefix="ds_bench_") as tmp:
            args.ckpt = str(write_checkpoint(tmp, TinyConfig(logit_peak=1.0)))
            _compare(args)
        return
    _compare(args)


def _compare(args: argparse.Namespace) -> None:
    # The CI box is shared: run the pair `--rounds` times, alternating, and keep each
    # implementation's best round (the one least disturbed by other work).
    results: dict[str, dict] = {}
    for r in range(args.rounds):
        for impl in (("ours", "in_tree") if r % 2 == 0 else ("in_tree", "ours")):
            got = _run(impl, args)
            best = results.setdefault(impl, got)
            results[impl] = {k: max(v, best[k]) for k, v in got.items()}
    print(f"checkpoint {args.ckpt}: {args.prompts} prompts x {args.prompt_len} tokens, "
          f"{args.tokens} generated each, TP={args.tp}, best of {args.rounds} round(s)")
    print(f"{'impl':<10}{'prefill tok/s':>16}{'decode tok/s':>16}{'e2e tok/s':>14}")
    for impl, r in results.items():
        print(f"{impl:<10}{r['prefill_tok_s']:>16.1f}{r['decode_tok_s']:>16.1f}"
              f"{r['e2e_tok_s']:>14.1f}")
    ours, peer = results["ours"], results["in_tree"]
    print(f"{'ratio':<10}{ours['prefill_tok_s'] / peer['prefill_tok_s']:>16.3f}"
          f"{ours['decode_tok_s'] / peer['decode_tok_s']:>16.3f}"
          f"{ours['e2e_tok_s'] / peer['e2e_tok_s']:>14.3f}   (ours / in-tree, goal >= 1.0)")


if __name__ == "__main__":
    main()
