"""`ds-plugin`: serve DeepSeek on vLLM with ds-plugin, and check, warm and prove a deployment.

    ds-plugin serve MODEL [vLLM or SGLang flags]      vllm serve, supervised (non-zero if engine dies)
    ds-plugin serve --from-sglang "python3 -m sglang.launch_server ..."
    ds-plugin recipe list | show NAME | check FILE    launch lines per hardware x weights
    ds-plugin doctor [--json]                         is this machine ready to serve?
    ds-plugin precompile --model DIR|HF_ID [--tp N] [--ep]   warm the Triton kernel cache
    ds-plugin conformance --base-url URL --model NAME protocol / quality / speed checks
    ds-plugin generate OUT | demo | check             tiny checkpoints, the demo, quick check

Each command's `--help` lists its options. Nothing here imports vLLM unless the command
needs it; `recipe` and `precompile` work without vLLM.
"""

from __future__ import annotations

import argparse
import sys

from ds_plugin import __version__

__all__ = ["main"]

# command -> module (ds_plugin.cli.<module>), each with add_parser(subparsers) and run(ns).
COMMANDS = {
    "recipe": "recipe", "doctor": "doctor", "precompile": "precompile",
    "conformance": "conformance", "generate": "generate", "demo": "demo", "check": "doctor",
}


def _version() -> str:
    from ds_plugin._vllm import supported_series_text

    return f"ds-plugin {__version__} (for vLLM {supported_series_text()})"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="ds-plugin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version(),
                   help="print ds-plugin's version and the vLLM series it supports")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    # `serve` parses its own argv (vLLM's flags must reach vLLM untouched); listed for --help.
    sub.add_parser("serve", add_help=False,
                   help="vLLM's OpenAI server with ds-plugin, supervised; takes vLLM's and "
                        "SGLang's flags (see `ds-plugin serve --help`)")
    for name, module in COMMANDS.items():
        importlib.import_module(f"ds_plugin.cli.{module}").add_parser(sub, name)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from ds_plugin.cli import serve

        return serve.main(argv[1:])
    ns = build_parser().parse_args(argv)
    return ns.run(ns)


