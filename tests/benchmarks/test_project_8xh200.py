"""The 8xH200 projection's arithmetic, on a made-up report small enough to check by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def proj():
    spec = importlib.util.spec_from_file_location("project_8xh200", BENCH / "project_8xh200.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["project_8xh200"] = mod
    spec.loader.exec_module(mod)
    return mod


def _report():
    rows = []
    for b, layer in ((1, 100.0), (32, 200.0)):
        for lay in ("TP8", "DP-attn+EP8"):
            rows.append({"layout": lay, "batch": b, "context": 4096, "ours": "o",
                         "us": {"o": layer}, "parts": {"attn_in": 10.0, "attn": 20.0,
                                                       "attn_out": 10.0, "experts": layer - 40}})
    extras = {str(b): {"lm_head": 30.0, "sample": 10.0, "dense_mlp_tp8": 50.0} for b in (1, 128)}
    return {"device": "test", "date": "today", "decode": rows, "extras": extras}


def test_tp8_all_reduce_model(proj):
    # batch 1: 2 x (10 us + 2 * 7/8 * 14336 B / 450 GB/s)
    assert proj.comm_us("TP8", 1) == pytest.approx(2 * (10 + 1.75 * 14336 / 450e3))


def test_step_is_the_sum_of_its_parts(proj):
    p = proj.step_us(_report(), "TP8", 4096, 1)
    assert p["MoE layers"] == 58 * 100.0
    assert p["dense layers"] == 3 * (40.0 + 50.0)
    assert p["LM head + sampling"] == 40.0
    assert p["total"] == pytest.approx(5800 + 270 + 40 + 61 * proj.comm_us("TP8", 1))
    # batch 16.5 lies halfway between the measured 1 and 32: the layer time interpolates
    assert proj.step_us(_report(), "TP8", 4096, 16.5)["moe_layer"] == pytest.approx(150.0)


def test_projection_prints(proj, capsys):
    proj.print_projection(_report())
    out = capsys.readouterr().out
    assert "| TP8 | 4096 | 1 |" in out and "SGLang's floors" in out
