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


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ds_plugin.cli", "demo", *args],
                          capture_output=True, text=True, timeout=1800,
                          env={**child_env(), "PYTHONPATH": str(ROOT),
                               # 1 GiB of KV cache, beside the session server and others.
                               "VLLM_CPU_KVCACHE_SPACE": "1"})


# One demo run, the README's (trained weights, MTP on): `--weights random` differs only in
# the weights written, and a random tiny checkpoint is what the session servers of tests/e2e
# serve through the same VllmServer; a second demo start would cost CI ~2-3 min.
def test_default_demo_answers_a_known_dialogue_with_mtp_and_cleans_up():
    from ds_plugin.testing import tiny_corpus

    out = _demo()
    assert out.returncode == 0, out.stderr[-3000:]
    answer = re.search(r"\[demo\] answer : '(.*)'", out.stdout).group(1)
    # The default prompt is one of the trained dialogues, which the checkpoint knows word
    # for word (tests/spec/test_trained_checkpoint.py holds it to that).
    want = dict(tiny_corpus.dialogues())["What are the days of the week?"]
    assert answer == want, (answer, want)
    accepted = re.search(r"\[demo\] MTP    : (\d+) of (\d+) drafted", out.stdout)
    assert accepted and int(accepted.group(1)) > 0, out.stdout[-2000:]
    ckpt = Path(re.search(r"checkpoint \(\w+ weights\) to (\S+)", out.stdout).group(1))
    removed = Path(re.search(r"\[demo\] removed (\S+)", out.stdout).group(1))
    assert removed == ckpt.parent and not removed.exists()
