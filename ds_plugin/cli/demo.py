"""`ds-plugin demo`: tiny checkpoint -> the real vLLM OpenAI server with ds-plugin -> one chat."""

from __future__ import annotations

import argparse
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
    d.add_argument("--prompt", default="What is the capital of France?",
                   help="the user message (default: %(default)r)")
    d.add_argument("--max-tokens", type=int, default=24,
                   help="answer length limit (default: %(default)s)")
    d.set_defaults(run=run)


def run(ns: argparse.Namespace) -> int:
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

    temporary = ns.workdir is None
    work = Path(tempfile.mkdtemp(prefix="ds-plugin-demo-") if temporary else ns.workdir)
    ckpt = work / "tiny-deepseek-v3"
    print(f"[demo] writing a tiny DeepSeek-V3-format checkpoint to {ckpt}", flush=True)
    status = 1
    try:
        write_checkpoint(ckpt, TinyConfig(logit_peak=2.0), quant=ns.quant, tokenizer=ns.tokenizer)
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

    print("[demo] starting the vLLM OpenAI server with ds-plugin loaded "
          "(a few minutes on a 2-core CPU)", flush=True)
    try:
        with VllmServer(ckpt, args=[*CPU_DEFAULT_ARGS, "--served-model-name", "tiny-deepseek"],
                        log_path=log) as srv:
            print(f"[demo] server up at {srv.url}; sending one chat request", flush=True)
            status, body = srv.post("/v1/chat/completions", {
                "model": "tiny-deepseek", "max_tokens": ns.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": ns.prompt}]})
    except ServerError as e:
        print(f"[demo] {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"[demo] request failed ({status}): {body}", file=sys.stderr)
        return 1
    print(f"[demo] prompt : {ns.prompt}")
    print(f"[demo] answer : {body['choices'][0]['message']['content']!r}")
    print(f"[demo] usage  : {body['usage']}")
    print("[demo] (random tiny weights: the answer is real model output, not language)")
    print("[demo] server stopped")
    return 0
