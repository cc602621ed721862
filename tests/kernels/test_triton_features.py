"""The Triton feature table (ds_plugin/kernels/triton_features.py): the installed Triton has
every feature in it, a Triton lacking one fails `import ds_plugin.kernels` loudly, naming
the feature, and each row names the kernel modules that really use the feature."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from ds_plugin.kernels.triton_features import (TRITON_FEATURES, TritonFeatureError, check_triton,
                                               has_feature, missing_features)

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "ds_plugin" / "kernels"


def test_installed_triton_has_every_feature():
    assert missing_features() == {}, f"Triton {triton.__version__}"


def test_import_fails_loudly_without_a_feature():
    # The real import path, in a fresh interpreter whose Triton lost `tl.sort`.
    code = ("import triton.language as tl\ndel tl.sort\n"
            "import ds_plugin.kernels\nprint('imported')")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": path})  # the same Triton as this run
    assert r.returncode != 0 and "imported" not in r.stdout, r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ds_plugin.kernels.triton_features.TritonFeatureError: "), r.stderr
    assert f"installed Triton {triton.__version__} lacks: tl.sort (used by fp8_moe, fp8_moe_prefill)" in last


def test_check_names_every_missing_feature():
    table = {"tl.sort": ("fp8_moe",), "tl.no_such_op": ("a", "b"), "tl.range(no_such_kw=)": ("c",)}
    with pytest.raises(TritonFeatureError) as e:
        check_triton(table)
    msg = str(e.value)
    assert "tl.no_such_op (used by a, b); tl.range(no_such_kw=) (used by c)" in msg
    assert "tl.sort" not in msg


def test_feature_forms():
    import inspect

    import triton.language as tl

    assert has_feature("tl.sort") and has_feature("triton.language.math.div_rn")
    assert not has_feature("tl.no_such_op")
    ws = "warp_specialize" in inspect.signature(tl.range).parameters
    assert has_feature("tl.range(warp_specialize=)") == ws
    stages = "num_stages" in inspect.signature(tl.range).parameters
    assert has_feature("tl.range(num_stages=)") == stages
    with pytest.raises(ValueError, match="must start with"):
        has_feature("torch.sort")


def _token(feature: str) -> str:
    path, _, kw = feature.partition("(")
    return f"{kw.rstrip(')')}" if kw else path  # "warp_specialize=" / "tl.sort"


def test_each_row_names_the_modules_that_use_the_feature():
    sources = {p.stem: p.read_text() for p in KERNELS.glob("*.py") if p.stem != "triton_features"}
    for feature, users in TRITON_FEATURES.items():
        token = _token(feature)
        using = {m for m, text in sources.items() if token in text and not m.startswith("ref_")}
        assert set(users) == using, f"{feature}: table says {sorted(users)}, used by {sorted(using)}"
