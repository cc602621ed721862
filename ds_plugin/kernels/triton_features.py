"""The Triton features our kernels need beyond the basics, checked when ds_plugin.kernels is
imported: a Triton without one fails there, naming it, rather than deep inside a kernel
compile or, worse, through a silent fallback.

Triton versions the kernels run on: compiled on 3.6 (the H200 machine's torch 2.11), and
under the interpreter on 3.9 (CI's default) and 3.8 (CI, tests/test_triton_versions.py: the
Triton of vLLM 0.33's torch 2.14). vLLM 0.32's CUDA wheel pins torch 2.13, which pins 3.7.1.

Kernel authors: a kernel that uses a feature newer than Triton 3.6 (or one the interpreter
may lack) adds a row here: the feature as written in the kernel, then the kernel modules
that use it. tests/kernels/test_triton_features.py checks each row's modules really use it.
"""

from __future__ import annotations

import inspect

# Feature -> kernel modules (ds_plugin/kernels/NAME.py) that use it. A feature is an
# attribute path ("tl.sort", "triton.language.math.div_rn") or a keyword argument of a
# callable ("tl.range(warp_specialize=)").
TRITON_FEATURES: dict[str, tuple[str, ...]] = {
    "tl.sort": ("fp8_moe", "fp8_moe_prefill"),
    "tl.cumsum": ("fp8_moe", "fp8_moe_prefill"),
    "tl.math.div_rn": ("fp8_moe_prefill", "fp8_quant", "w4a8_gemm"),
    "tl.inline_asm_elementwise": ("mla_tiles", "w4a8_gemm"),
    "tl.make_tensor_descriptor": ("mla_decode",),
    "tl.div_rn": ("mla_kv_cache",),
    "tl.clamp": ("mla_kv_cache",),
}

TESTED_TRITON = "3.6 (compiled) to 3.9 (interpreted)"


class TritonFeatureError(ImportError):
    """The installed Triton lacks a feature a ds-plugin kernel needs."""


def _resolve(path: str):
    import triton
    import triton.language as tl

    head, *rest = path.split(".")
    obj = {"tl": tl, "triton": triton}.get(head)
    if obj is None:
        raise ValueError(f"Triton feature {path!r}: must start with 'tl.' or 'triton.'")
    for part in rest:
        obj = getattr(obj, part)
    return obj


def has_feature(feature: str) -> bool:
    """Whether the installed Triton has `feature` (see TRITON_FEATURES for the forms)."""
    path, _, kw = feature.partition("(")
    try:
        obj = _resolve(path)
    except AttributeError:
        return False
    if not kw:
        return True
    name = kw.rstrip(")").rstrip("=")
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def missing_features(table: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[str, ...]]:
    table = TRITON_FEATURES if table is None else table
    return {f: users for f, users in table.items() if not has_feature(f)}


def check_triton(table: dict[str, tuple[str, ...]] | None = None) -> None:
    """Raise TritonFeatureError naming every missing feature and the kernels needing it."""
    missing = missing_features(table)
    if missing:
        import triton

        lacking = "; ".join(f"{f} (used by {', '.join(users)})" for f, users in missing.items())
        raise TritonFeatureError(
            f"ds-plugin kernels need Triton features that the installed Triton "
            f"{triton.__version__} lacks: {lacking}. ds-plugin's kernels are tested on Triton "
            f"{TESTED_TRITON}.")
