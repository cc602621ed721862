"""The kernel suite under the Triton interpreter of another Triton release: 3.8, the one
vLLM 0.33's torch 2.14 pins (CI's default Triton is 3.9; the GPU machine compiles on 3.6).

Triton 3.8 is installed with `pip install --no-deps --target` into a cache folder
(DS_PLUGIN_TRITON_CACHE, default ~/.cache/ds-plugin/triton-VERSION, ~900 MB) and put ahead
of the environment's Triton on PYTHONPATH for a child pytest of tests/kernels. torch does
not mind: the CPU build of torch 2.13 declares no Triton dependency and imports none, and
the interpreter runs kernels on torch's CPU tensors. A Triton that can be neither
downloaded nor found in the cache FAILS the test, naming the pip command to run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRITON = "3.8.0"


def _overlay(version: str) -> Path:
    default = Path.home() / ".cache" / "ds-plugin" / f"triton-{version}"
    target = Path(os.environ.get("DS_PLUGIN_TRITON_CACHE", default))
    stamp = target / f"triton-{version}.dist-info" / "METADATA"
    if stamp.is_file():
        return target
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--timeout", "20", "--retries", "1", "--upgrade",
           "--target", str(target), f"triton=={version}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not stamp.is_file():
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.fail(f"Triton {version} is neither cached in {target} nor installable ({why}). "
                    f"Run, where PyPI is reachable: {' '.join(cmd)}")
    return target


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="an interpreter run (CPU CI); on CUDA the suite runs compiled, "
                           "on the installed Triton")
def test_kernel_suite_under_triton_3_8_interpreter(capsys):
    overlay = _overlay(TRITON)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(overlay), str(ROOT)])}
    code = "import triton; print(triton.__version__, triton.__file__)"
    probe = subprocess.run([sys.executable, "-c", code],
                           capture_output=True, text=True, env=env, timeout=300)
    assert probe.stdout.split()[:1] == [TRITON], probe.stdout + probe.stderr
    assert probe.stdout.split()[1].startswith(str(overlay)), probe.stdout
    # Every kernel test but the tensor-parallel shard sums (test_tp_shards.py): those run
    # the same kernels again on per-rank slices of the same shapes, a question of sharding,
    # not of the Triton release, and are the suite's slowest file (~170 s on a 2-core box).
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/kernels", "-q", "-p", "no:cacheprovider",
                        "--ignore=tests/kernels/test_tp_shards.py"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    with capsys.disabled():
        tail = "\n".join(r.stdout.strip().splitlines()[-3:])
        print(f"\nTriton {TRITON} interpreter run of tests/kernels ({overlay}):\n{tail}")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
