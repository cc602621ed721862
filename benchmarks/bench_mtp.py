"""MTP speculative decoding: acceptance (our draft vs vLLM's in-tree draft) and decode tokens/s
with and without it, through the real engine.

    python benchmarks/bench_mtp.py [--ks 1 2 3] [--batch 4] [--tokens 96] [--quant bf16]

Serves the trained tiny checkpoint (ds_plugin.testing.train_tiny; trained and cached on the
first call), compiled as vLLM serves by default. One engine per row, one after another in one
child process: no MTP, then for each k our draft, then for each k vLLM's in-tree draft (the
same target, vLLM's DeepSeekMTP class put back for the draft architecture with
model_class_overrides; last, as the override stays in the process's registry). Per row:

- acceptance rate (accepted / drafted tokens) and mean accepted length (1 + accepted /
  drafts, the bonus token counted as vLLM logs it), from vLLM's own spec-decode counters
  (LLM.get_metrics, the numbers /metrics exports), on two prompt sets: dialogues the model
  it was trained on (it writes them, or text close to them) and prompts it does not (it writes text of its own,
  which the draft must predict from the model's hidden state alone);
- decode tokens/s at batch 1 and at --batch, and the ratio to the no-MTP row.

CPU figures are relative only: on a GPU the verify step of k + 1 tokens costs about one
decode step, on two CPU cores it costs more, so the speed-up here understates a GPU's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_TREE = {"DeepSeekMTPModel": "vllm.model_executor.models.deepseek_mtp:DeepSeekMTP"}
KNOWN_LONG = ["Tell me a story.", "How does speculative decoding work?"]
KNOWN = KNOWN_LONG + ["Count from one to ten.", "What is the capital of Japan?",
                      "What are the days of the week?", "Why is the sky blue? Think first.",
                      "What is the weather in Paris?", "Who are you?"]
UNKNOWN = ["What is the capital of the Moon?", "Describe a dragon.", "Write a poem about rain.",
           "What is seven times eight?", "Explain photosynthesis.", "Name three rivers."]


def _counters(llm) -> dict:
    out = {}
    for m in llm.get_metrics():
        if m.name.startswith("vllm:spec_decode"):
            out[m.name.removeprefix("vllm:spec_decode_")] = (
                list(m.values) if hasattr(m, "values") else m.value)
    return out


def _delta(after: dict, before: dict) -> dict:
    if not after:
        return {}
    drafts = after["num_drafts"] - before.get("num_drafts", 0)
    drafted = after["num_draft_tokens"] - before.get("num_draft_tokens", 0)
    accepted = after["num_accepted_tokens"] - before.get("num_accepted_tokens", 0)
    return {"rate": accepted / max(drafted, 1), "mean_len": 1 + accepted / max(drafts, 1),
            "drafts": drafts}


def _row(args: argparse.Namespace, k: int, draft: str, api) -> dict:
    LLM, SamplingParams, TokensPrompt, tok, prompt_ids = api
    ids = lambda texts: [TokensPrompt(prompt_token_ids=prompt_ids(tok, t)) for t in texts]  # noqa: E731
    engine = {}
    if k:
        engine["speculative_config"] = {"method": "mtp", "num_speculative_tokens": k}
    if draft == "in_tree":
        engine["model_class_overrides"] = IN_TREE
    t_start = time.perf_counter()
    llm = LLM(model=args.ckpt, dtype="bfloat16", max_model_len=1024, max_num_seqs=8, seed=0,
              gpu_memory_utilization=0.15, skip_tokenizer_init=True, disable_log_stats=False,
              **engine)
    greedy = lambda n, eos: SamplingParams(max_tokens=n, temperature=0, ignore_eos=eos)  # noqa: E731
    llm.generate(ids(KNOWN[:1]), greedy(8, True), use_tqdm=False)  # warm-up
    result: dict = {}
    for label, texts, n, ignore_eos in (
            ("known", KNOWN, 64, False), ("unknown", UNKNOWN, 48, False)):
        before = _counters(llm)
        llm.generate(ids(texts), greedy(n, ignore_eos), use_tqdm=False)
        result[label] = _delta(_counters(llm), before)
    # Decode speed: the long memorised answers, so every row decodes the same text.
    for label, texts in (("b1", KNOWN_LONG[:1]), (f"b{args.batch}",
                                                   (KNOWN_LONG * args.batch)[:args.batch])):
        prompts = ids(texts)
        t0 = time.perf_counter()
        llm.generate(prompts, greedy(1, True), use_tqdm=False)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs = llm.generate(prompts, greedy(args.tokens, True), use_tqdm=False)
        total_s = time.perf_counter() - t0
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        result[label] = (generated - len(prompts)) / max(total_s - prefill_s, 1e-9)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    result["wall_s"] = time.perf_counter() - t_start
    return result


def _child(args: argparse.Namespace) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from ds_plugin.testing.train_tiny import load_tokenizer, prompt_ids

    api = (LLM, SamplingParams, TokensPrompt, load_tokenizer(), prompt_ids)
    for row in json.loads(args.rows):
        result = _row(args, row[0], row[1], api)
        print("RESULT " + json.dumps([row, result]), flush=True)


def _run(args: argparse.Namespace, rows: list[tuple[int, str]]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--ckpt", args.ckpt, "--rows", json.dumps(rows),
           "--batch", str(args.batch), "--tokens", str(args.tokens)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            (k, draft), result = json.loads(line[len("RESULT "):])
            results[k, draft] = result
    if len(results) != len(rows):
        raise RuntimeError(f"bench child failed after {len(results)} rows:\n"
                           f"{proc.stderr[-4000:]}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--quant", choices=["bf16", "fp8"], default="bf16")
    ap.add_argument("--no-in-tree", action="store_true", help="skip vLLM's draft rows")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--rows", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    sys.path.insert(0, ROOT)
    from ds_plugin.testing.train_tiny import trained_checkpoint

    args.ckpt = str(trained_checkpoint(args.quant))
    rows = ([(0, "none")] + [(k, "ours") for k in args.ks]
            + ([] if args.no_in_tree else [(k, "in_tree") for k in args.ks]))
    results = _run(args, rows)
    base = results[0, "none"]
    b = f"b{args.batch}"
    print(f"checkpoint {args.ckpt} ({args.quant}), decode of {args.tokens} tokens; "
          "CPU figures, relative only")
    print(f"{'draft':<9}{'k':>2} | {'known: rate':>11}{'mean len':>9} | {'unknown: rate':>13}"
          f"{'mean len':>9} | {'b1 tok/s':>9}{'x':>6} | {b + ' tok/s':>9}{'x':>6} | {'wall s':>6}")
    for (k, d), r in results.items():
        kn, un = r["known"] or {}, r["unknown"] or {}
        acc = (f"{kn['rate']:>11.3f}{kn['mean_len']:>9.2f} | {un['rate']:>13.3f}"
               f"{un['mean_len']:>9.2f}" if kn else f"{'-':>11}{'-':>9} | {'-':>13}{'-':>9}")
        print(f"{d:<9}{k:>2} | {acc} | {r['b1']:>9.1f}{r['b1'] / base['b1']:>6.2f} | "
              f"{r[b]:>9.1f}{r[b] / base[b]:>6.2f} | {r['wall_s']:>6.0f}")


if __name__ == "__main__":
    main()
