"""Recipes: the schema refuses what it must (by key), every shipped row is valid, and every
rendered `vllm serve` line parses with vLLM's own serve argument parser."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ds_plugin import QUANT_CONFIGS
from ds_plugin._vllm import SUPPORTED_VLLM_SERIES
from ds_plugin.recipes import RecipeError, effective_status, launch, launch_lines, load, load_all
from ds_plugin.recipes.sglang import parse_command, translate
from ds_plugin.recipes.versions import in_range

ROOT = Path(__file__).resolve().parents[2]
RECIPES = load_all()
# The table of the issue: every row has a recipe.
ROWS = {("fp8", "H200", 8), ("fp8", "B200", 8), ("fp8", "MI300X", 8), ("fp8", "H100", 16),
        ("fp8", "Xeon 6 (AMX)", 2), ("bf16", "H200", 16), ("bf16", "MI300X", 16),
        ("bf16", "H100", 32), ("bf16", "A100-80G", 32), ("int8", "A100-80G", 16),
        ("int8", "L40S", 32), ("int8", "Xeon 6 (AMX)", 2),
        ("int8", "Ascend 910C (Atlas 800I A3)", 64), ("w4afp8", "H20", 8),
        ("w4afp8", "H200", 4), ("awq", "H100-80G", 8), ("awq", "A100-80G", 8),
        ("mxfp4", "MI355X", 8), ("nvfp4", "B200", 4)}


@pytest.fixture(scope="module")
def vllm_check():
    from ds_plugin._vllm.cli import check_serve_line, serve_parser

    parser = serve_parser()
    return lambda line: check_serve_line(line, parser)


def test_every_row_of_the_table_has_a_recipe():
    have = {(r.weights.format, r.hardware.accelerator, r.hardware.per_node * r.hardware.nodes)
            for r in RECIPES}
    assert ROWS <= have, ROWS - have


@pytest.mark.parametrize("r", RECIPES, ids=[r.name for r in RECIPES])
def test_rendered_lines_parse_with_vllms_serve_parser(r, vllm_check):
    # Unsupported rows render too (no command shows them): when a row flips, its line is ready.
    lines = launch_lines(r)
    assert len(lines) == r.hardware.nodes
    for rank, line in enumerate(lines):
        ns = vllm_check(line)
        assert ns.model_tag == r.weights.checkpoint
        assert ns.tensor_parallel_size == r.parallel.tp
        assert ns.data_parallel_size == r.parallel.dp
        assert ns.enable_expert_parallel == r.parallel.ep
        assert ns.headless == (rank > 0)
        if r.mtp:
            assert ns.speculative_config == {"method": "mtp", "num_speculative_tokens": r.mtp}
        assert line.startswith(" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(r.env.items())))


@pytest.mark.parametrize("r", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_is_honest(r):
    # A recipe states the range its line was verified on: the series CI runs the engine of.
    engine = [f"{a}.{b}.0" for (a, b), how in SUPPORTED_VLLM_SERIES.items() if how == "engine"]
    assert any(in_range(v, r.vllm) for v in engine), (r.vllm, engine)
    status, why = effective_status(r)
    assert (status == "unsupported") == bool(why)
    if r.requires:
        assert r.status == "supported"  # the registration flips it, not an edit
        assert status == ("supported" if set(r.requires) <= set(QUANT_CONFIGS) else "unsupported")
    if r.hardware.accelerator.startswith(("MI", "Ascend")):  # ROCm / Ascend: never run
        assert status == "unsupported"
    if r.weights.format in ("awq", "nvfp4"):
        # vLLM's methods on our model: load-proven on CPU (tests/model/test_foreign_quant.py),
        # never executed; the recipe must say so.
        assert "Load-proven, not run" in (r.notes or "")
    for ref in r.reference:
        assert ref.source and ref.setting


WITH_SGLANG = [r for r in RECIPES if r.sglang]


@pytest.mark.parametrize("r", WITH_SGLANG, ids=[r.name for r in WITH_SGLANG])
def test_sglangs_published_line_translates(r, vllm_check):
    env, argv = parse_command(r.sglang)
    ours = translate(argv, env=env)
    assert ours.gpus == launch(r).gpus and ours.nodes == r.hardware.nodes
    assert ours.mtp_tokens == (r.mtp or None)
    vllm_check(" ".join(["vllm", "serve", *map(shlex.quote, ours.argv())]))


def test_requires_is_checked_against_registered_quant_configs():
    r = next(r for r in RECIPES if r.requires == ("w4afp8",))
    assert effective_status(r, registered={"ds_fp8"})[0] == "unsupported"
    assert "w4afp8" in effective_status(r, registered={"ds_fp8"})[1]
    assert effective_status(r, registered={"ds_fp8", "w4afp8"}) == ("supported", None)


def _write(tmp_path, data) -> Path:
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return yaml.safe_load((ROOT / "ds_plugin/recipes/fp8-8xh200.yaml").read_text())


@pytest.mark.parametrize("change, key", [
    (lambda d: d.update(paralel={"tp": 8}), "paralel"),
    (lambda d: d["hardware"].update(gpus=8), "hardware.gpus"),
    (lambda d: d["parallel"].update(tp=4), "(top level)"),
    (lambda d: d.update(status="unsupported"), "(top level)"),
    (lambda d: d["weights"].update(format="fp6"), "weights.format"),
    (lambda d: d.update(vllm="0.32"), "vllm"),
    (lambda d: d.update(mtp=9), "mtp"),
    (lambda d: d.pop("weights"), "weights"),
    (lambda d: d["reference"][0].pop("source"), "reference.0.source"),
])
def test_schema_refuses_by_key(tmp_path, change, key):
    data = _base()
    change(data)
    with pytest.raises(RecipeError) as e:
        load(_write(tmp_path, data))
    assert any(f": {key}: " in line for line in e.value.lines), e.value.lines


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ds_plugin.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_recipe_commands(tmp_path):
    out = _cli("recipe", "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(RECIPES)
    for r, line in zip(RECIPES, lines, strict=True):
        status, why = effective_status(r)
        assert line.startswith(r.name) and r.weights.format in line
        tail = "supported" if status == "supported" else f"unsupported: {why}"
        assert line.endswith(tail)
    show = _cli("recipe", "show", "fp8-2x8xh100", "--lines-only")
    assert show.returncode == 0 and show.stdout.splitlines() == launch_lines(
        next(r for r in RECIPES if r.name == "fp8-2x8xh100"))
    assert _cli("recipe", "show", "int8-4xatlas800ia3", "--lines-only").returncode == 1  # unsupported
    good = _cli("recipe", "check", str(ROOT / "ds_plugin/recipes/fp8-8xh200.yaml"))
    assert good.returncode == 0 and "ok (fp8-8xh200, supported" in good.stdout
    data = _base()
    data["hardware"]["gpus"] = 8
    bad = _cli("recipe", "check", str(_write(tmp_path, data)))
    assert bad.returncode == 1 and "hardware.gpus: unknown key" in bad.stderr


def test_recipe_check_with_vllm_parser(tmp_path, capsys, vllm_check):
    from ds_plugin.cli import main

    data = _base()
    data["flags"] = ["--no-such-vllm-flag"]
    assert main(["recipe", "check", "--with-vllm", str(_write(tmp_path, data))]) == 1
    assert "--no-such-vllm-flag" in capsys.readouterr().err
