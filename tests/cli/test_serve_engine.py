"""`ds-plugin serve` runs vLLM's own `vllm serve` (CPU build included) from an SGLang launch
line, serves, and exits non-zero, saying so in one line, when the engine core dies (SIGKILL):
vLLM's API server alone exits 0. One engine start for all three."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ds_plugin.cli.serve import vllm_argv
from ds_plugin.cli.supervise import ENGINE_DIED, engine_cores
from ds_plugin.testing.server import CPU_DEFAULT_ARGS, child_env, free_port

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_engine_death_exits_non_zero(tiny_ckpt, tmp_path):
    port = free_port()
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    # SGLang's flags for what CPU_DEFAULT_ARGS say, translated at run time.
    assert CPU_DEFAULT_ARGS == ("--gpu-memory-utilization", "0.3", "--max-model-len", "2048")
    sglang = (f"python3 -m sglang.launch_server --model-path {tiny_ckpt} --tp 1 --host 127.0.0.1 "
              f"--port {port} --mem-fraction-static 0.3 --context-length 2048 "
              "--served-model-name tiny")
    cmd = [sys.executable, "-m", "ds_plugin.cli", "serve", "--from-sglang", sglang]
    # 1 GiB of KV cache (instead of 0.3 of the host), beside the session server and others.
    env = {**child_env(), "PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env)
    try:
        deadline = time.monotonic() + 900
        while not _healthy(port):
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "server not healthy in 900 s"
            time.sleep(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
            assert [m["id"] for m in json.load(r)["data"]] == ["tiny"]
        cores = engine_cores(proc.pid)
        assert len(cores) == 1, cores
        time.sleep(1.5)  # let the supervisor's watch see the engine once
        os.kill(cores[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == ENGINE_DIED
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    argv = vllm_argv(["--from-sglang", sglang])[0]
    assert out.read_text().splitlines()[0] == shlex.join(["vllm", "serve", *argv])
    assert argv[:1] == [str(tiny_ckpt)] and "--gpu-memory-utilization" in argv
    # Our last word; Python's resource tracker (a child sharing stderr) may warn after it.
    ours = [ln for ln in err.read_text().splitlines() if ln.startswith("ds-plugin serve:")]
    assert ours[-1:] == [f"ds-plugin serve: vLLM stopped on its own with status 0: its engine "
                         f"core (pid {cores[0]}) died; exiting with status {ENGINE_DIED}"]
