"""`ds-plugin recipe list | show NAME | check FILE`: launch lines per hardware x weights."""

from __future__ import annotations

import argparse
import sys
import textwrap


def add_parser(sub, name: str) -> None:
    r = sub.add_parser(name, help="launch recipes: list, show the vllm serve lines, check a file",
                       description="Recipes are YAML files shipped with ds-plugin, one per "
                       "hardware x weights row (ds_plugin/recipes/*.yaml). None of these "
                       "commands needs vLLM or a GPU.")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = rs.add_parser("list", help="one recipe a line: name, hardware, weights, status")
    ls.set_defaults(run=_list)
    show = rs.add_parser("show", help="the exact launch lines of one recipe")
    show.add_argument("name", help="recipe name (see `ds-plugin recipe list`)")
    show.add_argument("--lines-only", action="store_true",
                      help="print only the launch lines, one per node, nothing else")
    show.set_defaults(run=_show)
    check = rs.add_parser("check", help="validate your own recipe YAML (exit 1 naming the key)")
    check.add_argument("file", help="path of the YAML file")
    check.add_argument("--with-vllm", action="store_true",
                       help="also parse the rendered lines with the installed vLLM's own "
                            "serve argument parser (imports vLLM)")
    check.set_defaults(run=_check)


def _hardware(r) -> str:
    hw = r.hardware
    per = f"{hw.per_node}x{hw.accelerator}" if hw.kind != "cpu" else \
        f"{hw.accelerator}, {hw.per_node} sockets"
    return f"{hw.nodes}x{per}" if hw.nodes > 1 else per


def _list(ns: argparse.Namespace) -> int:
    from ds_plugin.recipes import RecipeError, effective_status, load_all

    try:
        recipes = load_all()
    except RecipeError as e:
        print(e, file=sys.stderr)
        return 1
    width = max(len(r.name) for r in recipes)
    hw_width = max(len(_hardware(r)) for r in recipes)
    for r in recipes:
        status, why = effective_status(r)
        tail = "supported" if status == "supported" else f"unsupported: {why}"
        mtp = f" +MTP{r.mtp}" if r.mtp else ""
        print(f"{r.name:{width}}  {_hardware(r):{hw_width}}  {r.weights.format:6}{mtp:6}  {tail}")
    return 0


def _show(ns: argparse.Namespace) -> int:
    from ds_plugin.recipes import effective_status, find, launch, launch_lines

    try:
        r = find(ns.name)
    except KeyError:
        print(f"ds-plugin recipe: no recipe {ns.name!r} (see `ds-plugin recipe list`)",
              file=sys.stderr)
        return 1
    status, why = effective_status(r)
    if ns.lines_only:
        if status != "supported":
            print(f"ds-plugin recipe: {r.name} is unsupported: {why}", file=sys.stderr)
            return 1
        print("\n".join(launch_lines(r)))
        return 0
    print(f"# {r.name}: {r.summary}")
    print(f"# hardware {_hardware(r)}; weights {r.weights.format} {r.weights.checkpoint}"
          + (f" (also {', '.join(r.weights.also)})" if r.weights.also else ""))
    print(f"# vLLM {r.vllm}; MTP {'off' if not r.mtp else f'{r.mtp} tokens'}")
    if status != "supported":
        print(f"# unsupported: {why}")
        print("# (no launch line: it would not serve with vLLM + ds-plugin today)")
    else:
        lines = launch_lines(r)
        for rank, line in enumerate(lines):
            if len(lines) > 1:
                print(f"# node {rank} of {len(lines)}"
                      + (" (replace NODE0_IP by node 0's address)" if rank == 0 else ""))
            print(line)
        if launch(r).notes:
            print("\n".join(f"# {n}" for n in launch(r).notes))
    for ref in r.reference:
        print(f"# reference: {ref.what}: {ref.value:g} {ref.unit} ({ref.engine}; {ref.setting}; "
              f"source: {ref.source})")
    if r.sglang:
        print(f"# SGLang's line for this row: {' '.join(r.sglang.split())}")
    if r.notes:
        print("\n".join("# " + ln for ln in textwrap.wrap(r.notes, 96)))
    return 0


def _check(ns: argparse.Namespace) -> int:
    from ds_plugin.recipes import RecipeError, effective_status, launch_lines, load

    try:
        r = load(ns.file)
        lines = launch_lines(r)
    except (RecipeError, ValueError) as e:
        print(e, file=sys.stderr)
        return 1
    if ns.with_vllm:
        from ds_plugin._vllm.cli import ServeArgsError, check_serve_line

        try:
            for line in lines:
                check_serve_line(line)
        except ServeArgsError as e:
            print(f"{ns.file}: vLLM's serve parser refuses the rendered line: {e}",
                  file=sys.stderr)
            return 1
    status, why = effective_status(r)
    print(f"{ns.file}: ok ({r.name}, {status}{': ' + why if why else ''}; "
          f"{len(lines)} launch line{'s' * (len(lines) > 1)})")
    return 0
