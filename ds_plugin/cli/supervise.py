"""Run vLLM's server as a child and turn how it ended into an exit status.

vLLM's API server stops by itself, with status 0, when its engine core dies (its watchdog
sees the dead engine and asks uvicorn to exit), so a supervisor restarting on failure never
restarts it. The API server never stops on its own otherwise, so the rule needs no vLLM
internals: if the child exits without having been asked to (no SIGINT/SIGTERM/SIGHUP
reached `ds-plugin serve`), that is a failure.

Exit status of `ds-plugin serve`:
    0   stopped on request (SIGINT, SIGTERM, SIGHUP forwarded to vLLM, which shut down)
    3   vLLM stopped on its own with status 0: its engine died (one line on stderr says so)
    N   vLLM's own non-zero status (startup errors, crashes); 128+S if killed by signal S
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["ENGINE_DIED", "run_supervised"]

ENGINE_DIED = 3
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if `ds-plugin serve` itself is killed outright, so a
    # SIGKILLed supervisor never leaves a server running.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    return kids


def engine_cores(root: int) -> list[int]:
    """Descendants of `root` whose title names vLLM's engine core (VLLM::EngineCore*)."""
    kids, found, todo = _children(), [], [root]
    while todo:
        for pid in kids.get(todo.pop(), []):
            todo.append(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"EngineCore" in cmd:
                found.append(pid)
    return found


class _EngineWatch(threading.Thread):
    """Remembers the engine-core pids it saw and whether one vanished before the server."""

    def __init__(self, proc: subprocess.Popen) -> None:
        super().__init__(daemon=True, name="ds-plugin-engine-watch")
        self.proc = proc
        self.seen: set[int] = set()
        self.lost: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        if not Path("/proc/self/stat").exists():
            return
        while not self.stop.wait(1.0) and self.proc.poll() is None:
            now = set(engine_cores(self.proc.pid))
            self.lost |= self.seen - now
            self.seen |= now


def run_supervised(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run `cmd` (vLLM's server) to its end; return ds-plugin serve's exit status."""
    requested: list[int] = []
    # Its own process group: a terminal's ^C reaches only us, and we forward it once.
    proc = subprocess.Popen(cmd, env=env, process_group=0, preexec_fn=_die_with_parent)

    def forward(signum, _frame) -> None:
        requested.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in _FORWARDED}
    watch = _EngineWatch(proc)
    watch.start()
    try:
        rc = proc.wait()
    finally:
        watch.stop.set()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _outcome(rc, bool(requested), sorted(watch.lost))


def _outcome(rc: int, requested: bool, lost_engines: list[int]) -> int:
    status = 128 - rc if rc < 0 else rc
    if requested:
        return status
    if rc == 0:
        who = (f"its engine core (pid {', '.join(map(str, lost_engines))}) died"
               if lost_engines else "its engine is gone (vLLM stops this way when the engine "
                                    "core dies)")
        _say(f"vLLM stopped on its own with status 0: {who}; exiting with status {ENGINE_DIED}")
        return ENGINE_DIED
    how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    _say(f"vLLM {how}")
    return status


def _say(message: str) -> None:
    # vLLM's last write to the shared stderr may lack its newline: start on a fresh line.
    print(f"\nds-plugin serve: {message}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    # Unbuffered, so vLLM's lines reach the terminal or log as they are written.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
