"""The `ds-plugin` command: help text everywhere, --version, serve's help shows vLLM's flags,
the CPU build's `vllm` script works through the ledgered fix, doctor's verdicts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ds_plugin
from ds_plugin import _vllm
from ds_plugin.cli import build_parser
from ds_plugin.cli.serve import _parser as serve_parser
from ds_plugin.patches import vllm_cpu_dist

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ds_plugin.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help():
    missing = []
    for p in [*_parsers(build_parser()), serve_parser()]:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                missing += [f"{p.prog} {c.dest}" for c in a._choices_actions
                            if not (c.help or "").strip()]
            elif not (a.help or "").strip():
                missing.append(f"{p.prog} {a.option_strings or a.dest}")
    assert not missing, missing


def test_version():
    out = _cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == (f"ds-plugin {ds_plugin.__version__} "
                                  f"(for vLLM {_vllm.supported_series_text()})")
    assert "0.32.x" in out.stdout


def test_generate_offers_every_checkpoint_format():
    from ds_plugin.cli import generate
    from ds_plugin.testing.checkpoint import QUANTS

    assert generate.QUANTS == QUANTS


def test_serve_help_shows_ours_then_vllms():
    out = _cli("serve", "--help")
    assert out.returncode == 0, out.stderr
    ours = out.stdout.index("--from-sglang")
    assert "--speculative-eagle-topk" in out.stdout and "Exit status: 0" in out.stdout
    vllm_part = out.stdout[out.stdout.index("usage: vllm serve", ours):]  # vLLM's own help
    for flag in ("--tensor-parallel-size", "--speculative-config", "--tool-call-parser"):
        assert flag in vllm_part


def test_serve_dry_run_prints_the_vllm_line():
    out = _cli("serve", "--dry-run", "--from-sglang",
               "python3 -m sglang.launch_server --model-path m --tp 8 --speculative-algorithm "
               "EAGLE --speculative-num-steps 2 --speculative-eagle-topk 1 "
               "--speculative-num-draft-tokens 3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("vllm serve m --tensor-parallel-size 8 --speculative-config "
                                  "'{\"method\": \"mtp\", \"num_speculative_tokens\": 2}'")
    bad = _cli("serve", "m", "--speculative-algorithm", "EAGLE", "--speculative-eagle-topk", "2")
    assert bad.returncode == 2 and "--speculative-eagle-topk 2" in bad.stderr


@pytest.mark.skipif(vllm_cpu_dist.script_state() == "ok", reason="a `vllm` distribution exists")
def test_vllm_console_script_works_on_the_cpu_build(tmp_path):
    # vllm-cpu's own script dies on the metadata lookup; the one `install` writes runs.
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      "from vllm.entrypoints.cli.main import main\nsys.exit(main())\n")
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert before.returncode != 0 and "PackageNotFoundError" in before.stderr
    assert vllm_cpu_dist.script_state(script) == "broken"
    vllm_cpu_dist.write_script(script)
    assert vllm_cpu_dist.script_state(script) == "fixed"
    after = subprocess.run([str(script), "serve", "--help=max-model-len"], capture_output=True,
                           text=True, env=env, timeout=300)
    assert after.returncode == 0 and "--max-model-len" in after.stdout, after.stderr


def test_the_alias_answers_only_the_name_vllm():
    # Entry points are not listed twice, and vLLM's CPU-platform check keeps its answer.
    code = ("import importlib.metadata as m\n"
            "from ds_plugin.patches.vllm_cpu_dist import install_alias\n"
            "n = len(list(m.entry_points(group='console_scripts')))\n"
            "active = install_alias()\n"
            "assert len(list(m.entry_points(group='console_scripts'))) == n\n"
            "print(active, m.version('vllm'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    if vllm_cpu_dist.script_state() != "ok":
        assert out.stdout.split() == ["True", f"{vllm_cpu_dist.md.version('vllm-cpu')}+cpu"]


def test_doctor_json_in_a_fresh_process():
    out = _cli("doctor", "--json", timeout=600)
    report = json.loads(out.stdout)
    rows = {r["check"]: r for r in report["rows"]}
    assert out.returncode == (0 if report["ok"] else 1)
    assert rows["vLLM"]["status"] == "OK"
    for kind in ("models", "tool parsers", "reasoning parsers", "quant methods"):
        assert rows[f"plugin {kind}"]["status"] == "OK", rows[f"plugin {kind}"]
    assert "deepseekv3" in rows["plugin tool parsers"]["detail"]
    assert "ds_fp8" in rows["plugin quant methods"]["detail"]
    assert rows["frontend"]["status"] == "OK"
    assert {"flashinfer", "deep_gemm", "flash_mla"} <= set(rows)


def test_doctor_fails_on_a_blocking_problem_and_warns_on_the_rust_frontend():
    out = _cli("doctor", "--no-probe", env={"VLLM_PLUGINS": "someone_else",
                                            "VLLM_USE_RUST_FRONTEND": "1"})
    assert out.returncode == 1
    assert "VLLM_PLUGINS" in out.stdout and "FAIL" in out.stdout
    assert "Rust frontend" in out.stdout and "blocking problems found" in out.stdout
