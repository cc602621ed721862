"""`ds-plugin serve`'s exit statuses, with real child processes standing in for vLLM's server
(the engine-death case with the real server is tests/cli/test_serve_engine.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ds_plugin.cli.supervise import ENGINE_DIED, run_supervised

ROOT = Path(__file__).resolve().parents[2]


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("code, status, says", [
    ("import sys; sys.exit(0)", ENGINE_DIED, "vLLM stopped on its own with status 0"),
    ("import sys; sys.exit(5)", 5, "vLLM exited with status 5"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9,
     "vLLM was killed by signal 9"),
])
def test_unrequested_exit(code, status, says, capfd):
    assert run_supervised(child(code)) == status
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ds-plugin serve: ") and says in err[-1]
    assert [ln for ln in err if ln.strip()] == [err[-1]]  # one line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_requested_stop_is_forwarded_and_exits_with_the_childs_status(sig, tmp_path):
    ready = tmp_path / "ready"
    server = ("import signal, sys, time, pathlib\n"
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
              "signal.signal(signal.SIGINT, lambda *a: sys.exit(0))\n"
              f"pathlib.Path({str(ready)!r}).touch()\ntime.sleep(120)\n")
    driver = ("import sys\nfrom ds_plugin.cli.supervise import run_supervised\n"
              f"sys.exit(run_supervised([sys.executable, '-c', {server!r}]))\n")
    p = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    p.send_signal(sig)
    assert p.wait(timeout=60) == 0
    assert p.stderr.read() == ""  # a requested stop says nothing
