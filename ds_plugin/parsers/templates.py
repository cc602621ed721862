"""Chat templates for DeepSeek tool use, shipped in the package (ds_plugin/templates/).

    vllm serve ... --chat-template "$(python -c 'from ds_plugin.parsers.templates import
        template_path; print(template_path("deepseekv31"))')"

| name          | for                         | tool-call format parsed by          |
|---------------|-----------------------------|-------------------------------------|
| `deepseekv3`  | DeepSeek-V3 / V3-0324       | `--tool-call-parser deepseekv3`     |
| `deepseekr1`  | DeepSeek-R1 / R1-0528       | `deepseekv3` + `--reasoning-parser deepseek-r1` |
| `deepseekv31` | DeepSeek-V3.1 (+ Terminus)  | `deepseekv31` + `--reasoning-parser deepseek-v3` |
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TEMPLATES", "template_path"]

_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATES = ("deepseekv3", "deepseekr1", "deepseekv31")


def template_path(name: str) -> Path:
    """Absolute path of the packaged tool-use chat template `name` (see TEMPLATES)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown DeepSeek chat template {name!r}; choose from {TEMPLATES}")
    return _DIR / f"tool_chat_template_{name}.jinja"
