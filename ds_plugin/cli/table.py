"""Plain-text tables for the CLI's reports (doctor, conformance): no dependency, no colour."""

from __future__ import annotations

import shutil
import textwrap

__all__ = ["render"]


def render(headers: list[str], rows: list[list[str]], wrap_last: bool = True) -> str:
    """Columns padded to their widest cell; the last column wraps to the terminal width."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) if rows else len(headers[i])
              for i in range(len(headers))]
    total = shutil.get_terminal_size((120, 20)).columns
    if wrap_last and len(headers) > 1:
        lead = sum(widths[:-1]) + 2 * (len(headers) - 1)
        widths[-1] = max(24, min(widths[-1], total - lead))
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for r in rows:
        last = textwrap.wrap(r[-1], widths[-1]) or [""] if wrap_last else [r[-1]]
        cells = zip(r[:-1] + [last[0]], widths, strict=True)
        out.append("  ".join(c.ljust(w) for c, w in cells).rstrip())
        pad = " " * (sum(widths[:-1]) + 2 * (len(headers) - 1))
        out += [pad + cont for cont in last[1:]]
    return "\n".join(out)
