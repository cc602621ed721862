"""The kernel suite tests what the machine runs: compiled Triton on CUDA, the interpreter on CPU.

A stray `TRITON_INTERPRET=1` (once set at import by a test module) turns a whole-suite GPU run
into an interpreter run that still passes; this test fails it instead.
"""

import importlib
import pkgutil

import torch
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, KernelInterface

import ds_plugin.kernels


def _kernels():
    found = {}
    for mod in pkgutil.iter_modules(ds_plugin.kernels.__path__):
        module = importlib.import_module(f"ds_plugin.kernels.{mod.name}")
        for name, obj in vars(module).items():
            fn = obj.fn if isinstance(obj, Autotuner) else obj  # autotune wraps the kernel
            if isinstance(fn, KernelInterface) and not isinstance(fn, Autotuner):
                found[f"{mod.name}.{name}"] = fn
    return found


def _is_gluon(fn) -> bool:
    # Gluon kernels (fp8_moe_ws) have no interpreter: CPU runs never launch them.
    return type(fn).__module__.startswith("triton.experimental.gluon")


def test_kernels_run_compiled_on_cuda_interpreted_on_cpu():
    kernels = _kernels()
    assert len(kernels) >= 8, sorted(kernels)
    interpreted = sorted(k for k, fn in kernels.items() if not isinstance(fn, JITFunction))
    if torch.cuda.is_available():
        assert not triton.knobs.runtime.interpret, "TRITON_INTERPRET is set on a CUDA machine"
        assert interpreted == [], f"interpreted on CUDA: {interpreted}"
    else:
        triton_kernels = sorted(k for k, fn in kernels.items() if not _is_gluon(fn))
        assert interpreted == triton_kernels, "CPU run without the Triton interpreter"
