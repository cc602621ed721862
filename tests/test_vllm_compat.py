"""The static vLLM compatibility check (ds_plugin.compat, scripts/vllm_compat.py).

The per-release report runs against the CUDA wheels of the supported range, downloaded
once into ~/.cache/ds-plugin/wheels (DS_PLUGIN_WHEEL_CACHE). A wheel that can be neither
downloaded nor found in the cache FAILS the test, naming the pip command to run: a check
that skipped itself offline would pass exactly when nobody looked. The analyzer itself is
tested on small synthetic vLLM trees where each kind of break is planted.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest

from ds_plugin import _vllm
from ds_plugin.compat import check, check_installed
from ds_plugin.compat.sources import SourceTree

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("vllm_compat", ROOT / "scripts/vllm_compat.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_installed_vllm_passes_the_check(capsys):
    report = check_installed()
    with capsys.disabled():
        print("\n" + report.format())
    assert report.ok, report.format()
    # The check saw the seam and the classes: an analyzer that resolves nothing passes too.
    assert report.counts["imported names"] >= 50 and report.counts["overrides"] >= 40, report.counts


def test_per_release_report_of_the_supported_range(capsys):
    script = _script()
    ok, text = script.run()
    with capsys.disabled():
        print("\n" + text)
    for series in _vllm.SUPPORTED_VLLM_SERIES:
        assert f"== {series[0]}.{series[1]} (" in text, f"no report for {series}"
    assert ok, "a supported vLLM series is incompatible or its wheel is unavailable; see above"


# -- the analyzer on planted breaks ---------------------------------------------------------

VLLM = {
    "vllm/__init__.py": "",
    "vllm/_version.py": "__version__ = '0.32.0'\n",
    "vllm/base.py": """
        from abc import ABC, abstractmethod

        class Impl(ABC):
            def __init__(self, a, b=None):
                self.scale = 1.0

            def hook(self, x, y):
                return x

            @abstractmethod
            def forward(self, q): ...

        def make(n, *, k=1):
            return n

        def caller(impl):
            impl.hook(1, 2)
    """,
}

OURS = {
    "ds_plugin/__init__.py": "MODELS = {}\n",
    "ds_plugin/_vllm.py": """
        def api():
            from types import SimpleNamespace

            from vllm.base import Impl, make

            return SimpleNamespace(Impl=Impl, make=make)
    """,
    "ds_plugin/glue.py": """
        from ds_plugin import _vllm

        V = _vllm.api()

        class Ours(V.Impl):
            def __init__(self, a):
                super().__init__(a, b=2)

            def hook(self, x, y):
                return V.make(x, k=self.scale)

            def forward(self, q):
                return q

            def mine(self):
                return 0
    """,
}


def _tree(tmp_path: Path, name: str, files: dict[str, str]) -> SourceTree:
    root = tmp_path / name
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return SourceTree.from_dir(root, name)


def _report(tmp_path, release_edit=None, ours=None):
    files = dict(VLLM)
    if release_edit:
        files["vllm/base.py"] = release_edit(textwrap.dedent(files["vllm/base.py"]))
    ours_tree = _tree(tmp_path, "ours", ours or OURS)
    return check(ours_tree, _tree(tmp_path, "rel", files), _tree(tmp_path, "ref", VLLM))


def _errors(report) -> list[str]:
    return [f"{f.symbol}: {f.message}" for f in report.errors]


def test_unchanged_release_is_ok(tmp_path):
    report = _report(tmp_path)
    assert report.ok and report.findings == [], report.format()
    assert report.counts["overrides"] == 3 and report.counts["calls"] >= 2, report.counts


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.replace("def hook(self, x, y)", "def hook(self, x, y, z)"),
     "vllm.base:Impl.hook: new required parameter 'z'"),
    (lambda s: s.replace("def hook(self, x, y)", "def hook(self, x)").replace("hook(1, 2)", "hook(1)"),
     "vllm.base:Impl.hook: parameter 'y' removed"),
    (lambda s: s.replace("def hook(self, x, y)", "def hook(self, x, y, w=None)")
                .replace("hook(1, 2)", "hook(1, 2, 3)"),
     "vllm.base:Impl.hook: vLLM passes 'w' as positional argument 3 (vllm/base.py:18); "
     "our override does not accept it"),
    (lambda s: s.replace("def make(n, *, k=1)", "def make(n, *, kk=1)"),
     "vllm.base:make: call V.make(...): unexpected keyword argument 'k'"),
    (lambda s: s.replace("def __init__(self, a, b=None)", "def __init__(self, a, *, c)"),
     "vllm.base:Impl.__init__: call super().__init__(...): unexpected keyword argument 'b'"),
    (lambda s: s.replace("    @abstractmethod", "    def mine(self):\n        return 1\n\n"
                                                  "    @abstractmethod"),
     "vllm.base:Impl.mine: new in vLLM: ours now overrides it"),
    (lambda s: s.replace("    @abstractmethod", "    @abstractmethod\n    def extra(self): ...\n\n"
                                                  "    @abstractmethod"),
     "vllm.base:Impl.extra: abstract in vLLM and not implemented"),
    (lambda s: s.replace("def make(", "def make_it("),
     "vllm.base:make: make not found in vllm.base"),
    (lambda s: s.replace("self.scale = 1.0", "self.scaling = 1.0"),
     "vllm.base:Impl.scale: self.scale no longer resolves"),
    (lambda s: s.replace("def hook(self, x, y)", "@staticmethod\n    def hook(x, y)"),
     "vllm.base:Impl.hook: was method, now staticmethod"),
])
def test_planted_break_is_an_error(tmp_path, edit, expected):
    report = _report(tmp_path, edit)
    assert expected in _errors(report), report.format()


def test_new_optional_parameter_nobody_passes_is_a_note(tmp_path):
    report = _report(tmp_path, lambda s: s.replace("def hook(self, x, y)",
                                                   "def hook(self, x, y, w=None)"))
    assert report.ok, report.format()
    notes = [f.message for f in report.findings if f.symbol == "vllm.base:Impl.hook"]
    assert "new optional parameter 'w' (our override would reject it if vLLM passes it)" in notes
    text = report.format()
    assert "before: (self, x, y)" in text and "now:    (self, x, y, w=None)" in text


def test_vllm_import_outside_the_seam_is_an_error(tmp_path):
    ours = {**OURS, "ds_plugin/other.py": "from vllm.base import make\n"}
    report = _report(tmp_path, ours=ours)
    assert "vllm.base:make: vLLM imported outside the seam (ds_plugin/_vllm)" in _errors(report)


def test_seam_as_a_package(tmp_path):
    # The seam may be ds_plugin/_vllm/ with modules; re-exports resolve through __init__.
    ours = {k: v for k, v in OURS.items() if k != "ds_plugin/_vllm.py"}
    ours["ds_plugin/_vllm/__init__.py"] = "from ds_plugin._vllm.parts import api\n"
    ours["ds_plugin/_vllm/parts.py"] = OURS["ds_plugin/_vllm.py"]
    assert _report(tmp_path, ours=ours).ok
    broken = _report(tmp_path, lambda s: s.replace("def hook(self, x, y)", "def hook(self, x, y, z)"),
                     ours=ours)
    assert "vllm.base:Impl.hook: new required parameter 'z'" in _errors(broken)
