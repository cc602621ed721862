"""What ds-plugin uses of vLLM, read from ds-plugin's own sources.

- the seam's imports (`ds_plugin/_vllm.py`, or the package `ds_plugin/_vllm/`): every
  `from vllm... import X`, `import vllm...`, `importlib.import_module("vllm...")` and
  lazy "vllm.module:attr" table entry; the same anywhere else in ds_plugin is a violation;
- the classes: every ds_plugin class, matched against vLLM bases per release;
- the sites: every call, attribute read and `self.x = ...` store, with the scope it
  resolves in (which of them reach vLLM is decided per release);
- the patch ledger's `Target:` lines (ds_plugin/patches/__init__.py);
- the registered models (ds_plugin.MODELS), which implement vLLM's model protocol.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ds_plugin.compat.resolve import Ref, Scope, function_scope
from ds_plugin.compat.sources import Module, SourceTree

SEAM = "ds_plugin._vllm"


@dataclass(frozen=True)
class Import:
    module: str  # the vLLM module
    name: str | None  # the imported name; None for a module import
    where: str  # "ds_plugin/x.py:LINE"

    @property
    def symbol(self) -> str:
        return f"{self.module}:{self.name}" if self.name else self.module


@dataclass(frozen=True, eq=False)
class Site:
    kind: str  # "call" (node: ast.Call), "read" or "store" (node: ast.Attribute)
    node: ast.AST
    scope: Scope
    where: str


@dataclass
class Uses:
    seam_imports: list[Import] = field(default_factory=list)
    violations: list[Import] = field(default_factory=list)  # vLLM imports outside the seam
    classes: list[Ref] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    patch_targets: list[tuple[str, str]] = field(default_factory=list)  # (dotted, where)
    models: list[str] = field(default_factory=list)  # "module:Class"


def where(m: Module, node: ast.AST) -> str:
    return f"{m.path}:{getattr(node, 'lineno', 0)}"


def _dotted(expr: ast.AST) -> str:
    if isinstance(expr, ast.Attribute):
        return f"{_dotted(expr.value)}.{expr.attr}"
    return expr.id if isinstance(expr, ast.Name) else ""


def _vllm_imports(m: Module) -> list[Import]:
    out = []
    for n in ast.walk(m.tree):
        if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] == "vllm":
            out += [Import(n.module, a.name, where(m, n)) for a in n.names]
        elif isinstance(n, ast.Import):
            out += [Import(a.name, None, where(m, n)) for a in n.names
                    if a.name.split(".")[0] == "vllm"]
        elif (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant)
              and isinstance(n.args[0].value, str) and n.args[0].value.split(".")[0] == "vllm"
              and _dotted(n.func) in ("importlib.import_module", "import_module", "__import__")):
            out.append(Import(n.args[0].value, None, where(m, n)))
    return out


def collect(ours: SourceTree) -> Uses:
    uses = Uses()
    for name in ours.modules("ds_plugin"):
        m = ours.module(name)
        if m is None:
            continue
        in_seam = name == SEAM or name.startswith(SEAM + ".")
        found = _vllm_imports(m)
        if in_seam:
            found += [Import(*target.split(":"), where(m, m.tree))
                      for target in m.lazy_table().values() if target.startswith("vllm.")]
        (uses.seam_imports if in_seam else uses.violations).extend(found)
        _visit(m, m.tree.body, Scope(m), None, uses)
        if name == "ds_plugin.patches":
            for line in (ast.get_docstring(m.tree) or "").splitlines():
                if line.strip().startswith("Target:"):
                    uses.patch_targets.append((line.split("Target:", 1)[1].split()[0], m.path))
        if name == "ds_plugin":
            uses.models = _models_table(m)
    return uses


def _visit(m: Module, body: list[ast.stmt], scope: Scope, cls: Ref | None, uses: Uses) -> None:
    """Sites of `body` in `scope`; nested functions and classes get their own scope."""
    stack = list(reversed(body))
    while stack:
        n = stack.pop()
        if isinstance(n, ast.ClassDef):
            ref = Ref("class", f"{m.name}:{n.name}", m, n)
            uses.classes.append(ref)
            for d in [*n.bases, *n.decorator_list, *n.keywords]:
                _sites(m, d, scope, uses)
            _visit(m, n.body, scope, ref, uses)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            for d in [*n.decorator_list, *a.defaults, *[x for x in a.kw_defaults if x]]:
                _sites(m, d, scope, uses)
            _visit(m, n.body, function_scope(m, n, cls, scope if scope.local else None),
                   None, uses)
        elif isinstance(n, ast.Lambda):
            continue
        else:
            _sites(m, n, scope, uses, descend=False)
            stack.extend(reversed(list(_child_statements(n))))


def _child_statements(n: ast.AST):
    for c in ast.iter_child_nodes(n):
        if isinstance(c, ast.stmt):
            yield c
        elif isinstance(c, (ast.excepthandler, ast.match_case)):
            yield from (x for x in ast.iter_child_nodes(c) if isinstance(x, ast.stmt))


def _sites(m: Module, node: ast.AST, scope: Scope, uses: Uses, descend: bool = True) -> None:
    """Calls and attribute accesses in `node`'s expressions (not its nested statements)."""
    stack = [node] if descend or not isinstance(node, ast.stmt) else [
        c for c in ast.iter_child_nodes(node) if not isinstance(c, ast.stmt)]
    if isinstance(node, ast.Try) and not descend:  # the handlers' types, not their bodies
        stack = [h.type for h in node.handlers if h.type is not None]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.stmt, ast.Lambda)) and n is not node:
            continue
        if isinstance(n, ast.Call):
            uses.sites.append(Site("call", n, scope, where(m, n)))
        elif isinstance(n, ast.Attribute):
            kind = "store" if isinstance(n.ctx, ast.Store) else "read"
            uses.sites.append(Site(kind, n, scope, where(m, n)))
        stack.extend(ast.iter_child_nodes(n))


def _models_table(m: Module) -> list[str]:
    for n in m.tree.body:
        target = n.target if isinstance(n, ast.AnnAssign) else (
            n.targets[0] if isinstance(n, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "MODELS" and isinstance(n.value, ast.Dict):
            return [v.value for v in n.value.values if isinstance(v, ast.Constant)]
    return []
