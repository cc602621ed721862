"""`ds-plugin demo`: tiny checkpoint -> the real vLLM OpenAI server with ds-plugin -> one chat.

By default the checkpoint is the trained one (ds_plugin.testing.train_tiny: it has learnt a
few dozen dialogues, and its MTP layer drafts what it will say), served with MTP speculative
decoding, so the answer is text and the server log shows drafts accepted. Training runs once
(minutes on 2 cores) and is cached; `--weights random` is the quick random-weight checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from ds_plugin.cli.generate import QUANTS, TOKENIZERS


def add_parser(sub, name: str) -> None:
    d = sub.add_parser(name, help="tiny checkpoint -> real vLLM server -> one chat request",
                       description="Write a tiny DeepSeek-V3 checkpoint, start the real vLLM "
                       "OpenAI server with ds-plugin loaded (minutes on a small CPU), send one "
                       "chat request, print the answer, stop the server, and remove the "
                       "checkpoint unless --keep.")
    d.add_argument("--workdir", help="where the checkpoint and server log go (default: a new "
                                     "temporary directory)")
    d.add_argument("--keep", action="store_true",
                   help="keep the checkpoint (and the temporary directory) afterwards")
    d.add_argument("--quant", choices=QUANTS, default="bf16",
                   help="checkpoint weights (default: %(default)s)")
    d.add_argument("--tokenizer", choices=TOKENIZERS, default="deepseek-v3",
                   help="released tokenizer and chat template to use (default: %(default)s)")
    d.add_argument("--weights", choices=("trained", "random"), default="trained",
                   help="trained: the tiny model trained on ds-plugin's dialogues (trained "
                   "once, minutes on 2 cores, then cached), served with MTP; random: random "
                   "weights, no MTP (default: %(default)s)")
    d.add_argument("--mtp", type=int, default=2, metavar="K",
                   help="draft tokens per step with --weights trained, 0 for none "
                   "(default: %(default)s)")
    d.add_argument("--prompt", default="What are the days of the week?",
                   help="the user message (default: %(default)r, a dialogue the trained "
                   "model knows)")
    d.add_argument("--max-tokens", type=int, default=48,
                   help="answer length limit (default: %(default)s)")
    d.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint
    from ds_plugin.testing.train_tiny import write_trained_checkpoint

    if ns.mtp < 0 or ns.mtp > 4:
        print(f"[demo] --mtp {ns.mtp}: DeepSeek MTP drafts 0..4 tokens per step",
              file=sys.stderr)
        return 2

    temporary = ns.workdir is None
    work = Path(tempfile.mkdtemp(prefix="ds-plugin-demo-") if temporary else ns.workdir)
    ckpt = work / "tiny-deepseek-v3"
    trained = ns.weights == "trained"
    print(f"[demo] writing a tiny DeepSeek-V3-format checkpoint ({ns.weights} weights) to "
          f"{ckpt}", flush=True)
    status = 1
    try:
        if trained:
            write_trained_checkpoint(ckpt, ns.quant, ns.tokenizer,
                                     log=lambda m: print(f"[demo] {m}", flush=True))
        else:
            write_checkpoint(ckpt, TinyConfig(logit_peak=2.0), quant=ns.quant,
                             tokenizer=ns.tokenizer)
        status = _chat(ns, ckpt, work / "server.log")
        return status
    finally:
        if ns.keep:
            print(f"[demo] kept {ckpt} (--keep)")
        elif status == 0 and temporary:
            shutil.rmtree(work, ignore_errors=True)
            print(f"[demo] removed {work} (--keep keeps it)")
        else:
            # A failed run keeps the server log for the diagnosis, not the checkpoint.
            shutil.rmtree(ckpt, ignore_errors=True)
            print(f"[demo] removed {ckpt} (--keep keeps it); server log: {work / 'server.log'}")


def _chat(ns: argparse.Namespace, ckpt: Path, log: Path) -> int:
    from ds_plugin.testing.server import CPU_DEFAULT_ARGS, ServerError, VllmServer

    args = [*CPU_DEFAULT_ARGS, "--served-model-name", "tiny-deepseek"]
    mtp = ns.mtp if ns.weights == "trained" else 0
    if mtp:
        args += ["--speculative-config",
                 json.dumps({"method": "mtp", "num_speculative_tokens": mtp})]
    print("[demo] starting the vLLM OpenAI server with ds-plugin loaded"
          + (f", MTP drafting {mtp} tokens per step" if mtp else "")
          + " (a few minutes on a 2-core CPU)", flush=True)
    try:
        with VllmServer(ckpt, args=args, log_path=log) as srv:
            print(f"[demo] server up at {srv.url}; sending one chat request", flush=True)
            status, body = srv.post("/v1/chat/completions", {
                "model": "tiny-deepseek", "max_tokens": ns.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": ns.prompt}]})
            accepted = _acceptance(srv.url) if mtp and status == 200 else None
    except ServerError as e:
        print(f"[demo] {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"[demo] request failed ({status}): {body}", file=sys.stderr)
        return 1
    print(f"[demo] prompt : {ns.prompt}")
    print(f"[demo] answer : {body['choices'][0]['message']['content']!r}")
    print(f"[demo] usage  : {body['usage']}")
    if ns.weights == "random":
        print("[demo] (random tiny weights: the answer is real model output, not language)")
    else:
        print("[demo] (a tiny model trained on a few dozen dialogues: it knows those, and "
              "writes its own text elsewhere)")
    if mtp:
        print(f"[demo] MTP    : {accepted or 'no drafts counted (vLLM /metrics)'}")
    print("[demo] server stopped")
    return 0


def _acceptance(url: str) -> str | None:
    """Drafts accepted so far, from the server's Prometheus counters (vLLM's definitions:
    acceptance = accepted / drafted tokens, mean length = 1 + accepted / drafts)."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    total: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens"):
            if line.startswith(f"vllm:spec_decode_{name}_total"):
                total[name] = total.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    if not total.get("num_drafts"):
        return None
    return (f"{total['num_accepted_tokens']:.0f} of {total['num_draft_tokens']:.0f} drafted "
            f"tokens accepted ({total['num_accepted_tokens'] / total['num_draft_tokens']:.0%}), "
            f"mean accepted length {1 + total['num_accepted_tokens'] / total['num_drafts']:.2f}")
