"""Is a vLLM release compatible with ds-plugin? A static check, by reading sources.

Reads ds-plugin's own sources and a vLLM release's Python sources (an installed vLLM, or a
wheel that was only downloaded) with `ast`; imports neither. It verifies that every name the
seam (ds_plugin/_vllm) imports exists in the release, that nothing outside the seam
imports vLLM, and that every vLLM method our classes override, every vLLM callable we
call, every vLLM attribute we read or set, vLLM's model protocol for our registered
models and every patched target has a compatible signature there. Against a reference
release (the one ds-plugin runs on in CI) it also reports what changed in between.

    from ds_plugin.compat import check_installed
    print(check_installed().format())       # what `ds-plugin doctor` can show

scripts/vllm_compat.py downloads the CUDA wheels of the supported range and reports per
release; tests/test_vllm_compat.py runs it in CI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ds_plugin.compat.check import Finding, Report, check, tree_version
from ds_plugin.compat.sources import SourceTree

__all__ = ["Finding", "Report", "check", "check_installed", "check_wheel", "installed_vllm_tree",
           "ours_tree", "tree_version"]


def ours_tree() -> SourceTree:
    """This ds-plugin's sources (the folder holding the imported `ds_plugin` package)."""
    return SourceTree.from_dir(Path(__file__).resolve().parents[2], "ds-plugin")


def installed_vllm_tree() -> SourceTree | None:
    """The installed vLLM's sources, found without importing vLLM (None if absent)."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return SourceTree.from_dir(root, "installed")


def check_installed() -> Report:
    """The installed vLLM, checked against this ds-plugin (no reference: absolute checks)."""
    tree = installed_vllm_tree()
    if tree is None:
        raise RuntimeError("vLLM is not installed: nothing to check")
    return check(ours_tree(), tree)


def check_wheel(wheel: str | Path, reference: SourceTree | None = None) -> Report:
    """A downloaded vLLM wheel, read in place; `reference` (e.g. installed_vllm_tree())
    adds what changed since that release."""
    return check(ours_tree(), SourceTree.from_wheel(wheel), reference)
