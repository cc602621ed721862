"""Launch recipes, one YAML per hardware x weights row, shipped in this package.

    from ds_plugin.recipes import load_all, launch_lines
    for r in load_all(): print(r.name, effective_status(r))

`launch(recipe)` builds the same `Launch` the SGLang translator builds, so both render
their `vllm serve` lines through one code path (ds_plugin/recipes/launch.py). Loading and
rendering need neither vLLM nor a GPU.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ds_plugin.recipes.launch import Launch
from ds_plugin.recipes.schema import Recipe, format_errors

__all__ = ["RECIPE_DIR", "Recipe", "RecipeError", "effective_status", "launch", "launch_lines",
           "load", "load_all", "find"]

RECIPE_DIR = Path(__file__).resolve().parent


class RecipeError(ValueError):
    """Invalid recipe; `lines` are 'FILE: key: message' entries, one per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def load(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError([f"{path}: {e}"]) from None
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: (top level): expected a mapping of recipe keys"])
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_errors(e, str(path))) from None


def load_all() -> list[Recipe]:
    recipes = [load(p) for p in sorted(RECIPE_DIR.glob("*.yaml"))]
    names = [r.name for r in recipes]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RecipeError([f"{RECIPE_DIR}: recipe name used twice: {', '.join(dup)}"])
    return recipes


def find(name: str) -> Recipe:
    for r in load_all():
        if r.name == name:
            return r
    raise KeyError(name)


def effective_status(recipe: Recipe, registered: set[str] | None = None) -> tuple[str, str | None]:
    """("supported", None) or ("unsupported", why). A recipe that `requires` a quantization
    method ds-plugin does not register (yet) is unsupported, whatever its file says."""
    if recipe.status == "unsupported":
        return "unsupported", recipe.reason
    if registered is None:
        from ds_plugin import QUANT_CONFIGS

        registered = set(QUANT_CONFIGS)
    missing = [q for q in recipe.requires if q not in registered]
    if missing:
        return "unsupported", (f"needs ds-plugin quantization method(s) {', '.join(missing)}, "
                               "not registered by this ds-plugin (ds_plugin.QUANT_CONFIGS)")
    return "supported", None


def _template(name: str | None) -> str | None:
    if name is None:
        return None
    from ds_plugin.parsers.templates import TEMPLATES, template_path

    return str(template_path(name)) if name in TEMPLATES else name


def launch(recipe: Recipe) -> Launch:
    par, p = recipe.parallel, recipe.parsers
    return Launch(
        model=recipe.weights.checkpoint, tp=par.tp, dp=par.dp, ep=par.ep,
        nodes=recipe.hardware.nodes, gpu_memory_utilization=recipe.gpu_memory_utilization,
        tool_parser=p.tool, reasoning_parser=p.reasoning, chat_template=_template(p.chat_template),
        mtp_tokens=recipe.mtp or None, quantization=recipe.weights.quantization,
        max_model_len=recipe.max_model_len, extra=tuple(recipe.flags),
        env=tuple(sorted(recipe.env.items())))


def launch_lines(recipe: Recipe) -> list[str]:
    """The shell lines, one per node (env assignments first)."""
    return launch(recipe).lines()
