"""Every DS_PLUGIN_* environment variable, in one table (read when asked, never cached).

vLLM starts workers as separate processes; environment variables reach all of them, which
is why these few switches are variables and not Python state.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# name -> (default, what it does)
ENV_VARS: dict[str, tuple[str, str]] = {
    "DS_PLUGIN_CPU_MLA": ("0", "1: ds-plugin's MLA backend replaces vLLM's CPU_MLA (pass "
                               "--attention-backend CPU_MLA); its decode is the torch adapter "
                               "(Triton under DS_PLUGIN_TRITON_ON_CPU=1)"),
    "DS_PLUGIN_MLA_KERNEL": ("", "the MLA decode adapter of ds-plugin's backend: triton, torch, "
                                 "flashinfer-fa3, flashinfer-fa2, flashinfer-trtllm-gen, "
                                 "flashinfer-cutlass or flashmla; unset: the measured default "
                                 "for the platform (ds_plugin/attention/mla_family.py DEFAULTS). "
                                 "An adapter that cannot serve fails the startup, naming why"),
    "DS_PLUGIN_TRITON_ON_CPU": ("0", "1: on a CPU, run the CUDA-side code paths (Triton kernels "
                                     "and their glue) through the Triton interpreter; needs "
                                     "TRITON_INTERPRET=1. For tests: slow"),
}


def flag(name: str) -> bool:
    """True when the switch `name` (a key of ENV_VARS) is set to 1."""
    default, _ = ENV_VARS[name]
    return os.environ.get(name, default) == "1"


def mla_kernel() -> str:
    """DS_PLUGIN_MLA_KERNEL, lower-cased ("" when unset)."""
    default, _ = ENV_VARS["DS_PLUGIN_MLA_KERNEL"]
    return os.environ.get("DS_PLUGIN_MLA_KERNEL", default).strip().lower()


def triton_on_cpu() -> bool:
    """Whether CPU tensors take the Triton (CUDA-side) path; refuses a setting that cannot run."""
    if not flag("DS_PLUGIN_TRITON_ON_CPU"):
        return False
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("DS_PLUGIN_TRITON_ON_CPU=1 needs TRITON_INTERPRET=1: Triton kernels run "
                           "on a CPU only under the interpreter")
    return True


def use_triton(device: torch.device) -> bool:
    """The one rule for choosing an implementation class: Triton on CUDA, and on a CPU only
    when DS_PLUGIN_TRITON_ON_CPU asks for the interpreter."""
    return device.type == "cuda" or (device.type == "cpu" and triton_on_cpu())
