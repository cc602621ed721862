"""Version ranges as recipes state them (">=0.32.0,<0.33"): a small parser, no `packaging`."""

from __future__ import annotations

import operator
import re

__all__ = ["parse_range", "in_range"]

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
        "==": operator.eq, "!=": operator.ne}
_CLAUSE = re.compile(r"^(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)$")


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def parse_range(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    clauses = []
    for part in spec.split(","):
        m = _CLAUSE.match(part.strip())
        if not m:
            raise ValueError(f"version range {spec!r}: cannot read {part.strip()!r} "
                             "(expected e.g. '>=0.32.0,<0.33')")
        clauses.append((m.group(1), _ver(m.group(2))))
    return clauses


def in_range(version: str, spec: str) -> bool:
    """Whether a release version ("0.32.0", "0.32.1+cpu") satisfies `spec`."""
    v = _ver(re.match(r"\d+(?:\.\d+)*", version).group(0))
    for op, bound in parse_range(spec):
        width = max(len(v), len(bound))
        a, b = v + (0,) * (width - len(v)), bound + (0,) * (width - len(bound))
        if not _OPS[op](a, b):
            return False
    return True
