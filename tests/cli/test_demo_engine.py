"""`ds-plugin demo` serves one chat through the real server and leaves no checkpoint behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ds_plugin.testing.server import child_env

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def test_demo_answers_and_cleans_up():
    out = subprocess.run([sys.executable, "-m", "ds_plugin.cli", "demo", "--max-tokens", "8"],
                         capture_output=True, text=True, timeout=1200,
                         env={**child_env(), "PYTHONPATH": str(ROOT),
                              # 1 GiB of KV cache, beside the session server and others.
                              "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[demo] answer : " in out.stdout
    ckpt = Path(re.search(r"checkpoint to (\S+)", out.stdout).group(1))
    removed = Path(re.search(r"\[demo\] removed (\S+)", out.stdout).group(1))
    assert removed == ckpt.parent and not removed.exists()
