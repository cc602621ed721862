"""Python sources of installed or downloaded packages, read as text and parsed with `ast`.

Nothing here imports the code it reads: a vLLM wheel for another torch, or a vLLM that
fails to import, is read the same as the installed one. A `World` joins several trees
(ds-plugin's own and one vLLM release) so that names resolve across them the way Python
would import them, as far as a static reading can tell.
"""

from __future__ import annotations

import ast
import functools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class SourceTree:
    """The .py files of one folder (site-packages, a repository root) or one wheel."""

    def __init__(self, label: str, read, names) -> None:
        self.label = label
        self._read = read  # relative posix path -> text or None
        self._names = names  # folder (relative posix) -> the .py paths in it, recursively

    @functools.cache
    def modules(self, package: str) -> list[str]:
        """Dotted names of every module in `package`, the package included."""
        base = package.replace(".", "/")
        out = []
        for rel in self._names(base):
            if rel.startswith(base + "/") or rel == base + ".py":
                dotted = rel[:-3].replace("/", ".")
                out.append(dotted.removesuffix(".__init__"))
        return sorted(out)

    @classmethod
    def from_dir(cls, root: str | Path, label: str | None = None) -> SourceTree:
        root = Path(root)

        def read(rel: str) -> str | None:
            p = root / rel
            return p.read_text(encoding="utf-8") if p.is_file() else None

        def names(base: str) -> list[str]:
            found = [p.relative_to(root).as_posix() for p in (root / base).rglob("*.py")]
            return found + ([f"{base}.py"] if (root / f"{base}.py").is_file() else [])
        return cls(label or str(root), read, names)

    @classmethod
    def from_wheel(cls, path: str | Path) -> SourceTree:
        zf = zipfile.ZipFile(path)
        names = set(zf.namelist())

        def read(rel: str) -> str | None:
            return zf.read(rel).decode("utf-8") if rel in names else None
        return cls(Path(path).name, read, lambda base: [n for n in names if n.endswith(".py")])

    def callers(self, package: str, method: str) -> list[tuple[str, ast.Call]]:
        """Every `<expr>.method(...)` call in `package` ("path:line", call): who calls a
        method of that name (by name only: a static reading cannot tell the receiver)."""
        needle = f".{method}("
        out = []
        for name in self.modules(package):
            m = self.module(name) if needle in self._text(name) else None
            for n in ast.walk(m.tree) if m else ():
                if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                        and n.func.attr == method):
                    out.append((f"{m.path}:{n.lineno}", n))
        return out

    @functools.cache
    def _text(self, dotted: str) -> str:
        base = dotted.replace(".", "/")
        return self._read(f"{base}/__init__.py") or self._read(f"{base}.py") or ""

    @functools.cache
    def module(self, dotted: str) -> Module | None:
        base = dotted.replace(".", "/")
        for rel, is_pkg in ((f"{base}/__init__.py", True), (f"{base}.py", False)):
            text = self._read(rel)
            if text is not None:
                return Module(dotted, ast.parse(text, filename=rel), is_pkg, rel)
        return None


@dataclass(eq=False)
class Module:
    name: str
    tree: ast.Module
    is_package: bool
    path: str
    _bindings: dict | None = field(default=None, repr=False)

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def absolute(self, node: ast.ImportFrom) -> str:
        """The absolute module name of a (possibly relative) `from X import ...`."""
        if not node.level:
            return node.module or ""
        parts = self.package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1])
        return f"{base}.{node.module}" if node.module else base

    @property
    def bindings(self) -> dict[str, tuple]:
        """Top-level name -> ("class"|"func"|"value", node) or ("import", module, name)
        or ("module", dotted). Names bound only under `if TYPE_CHECKING:` are not bound
        at run time and are left out; a later binding wins, as at run time."""
        if self._bindings is None:
            self._bindings = bindings_of(self.tree.body, self)
        return self._bindings

    def star_imports(self) -> list[str]:
        return [self.absolute(n) for n in _top_level(self.tree.body)
                if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)]

    def lazy_table(self) -> dict[str, str]:
        """A module `__getattr__` served from a dict of "module:attr" strings (vLLM's
        `MODULE_ATTRS`, ds-plugin's `_LAZY`): name -> absolute "module:attr"."""
        if "__getattr__" not in self.bindings:
            return {}
        out = {}
        for n in _top_level(self.tree.body):
            value = n.value if isinstance(n, (ast.Assign, ast.AnnAssign)) else None
            if isinstance(value, ast.Dict) and value.keys and all(
                    isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                    and isinstance(v.value, str) and ":" in v.value
                    for k, v in zip(value.keys, value.values)):
                for k, v in zip(value.keys, value.values):
                    mod, _, attr = v.value.partition(":")
                    if mod.startswith("."):
                        mod = self.package + mod if mod != "." else self.package
                    out[k.value] = f"{mod}:{attr}"
        return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level(body: list[ast.stmt]):
    """Statements that run at module (or class) level: into `if`/`try`/`with` blocks,
    not into `if TYPE_CHECKING:` nor into function bodies."""
    for n in body:
        if isinstance(n, ast.If):
            if not _is_type_checking(n.test):
                yield from _top_level(n.body)
            yield from _top_level(n.orelse)
        elif isinstance(n, ast.Try):
            for block in (n.body, *(h.body for h in n.handlers), n.orelse, n.finalbody):
                yield from _top_level(block)
        elif isinstance(n, ast.With):
            yield from _top_level(n.body)
        else:
            yield n


def bindings_of(body: list[ast.stmt], module: Module, deep: bool = False) -> dict[str, tuple]:
    """Names a block binds. `deep` (function bodies): every statement, nested blocks
    included, except nested function and class bodies."""
    out: dict[str, tuple] = {}
    stmts = _walk_function(body) if deep else _top_level(body)
    for n in stmts:
        if isinstance(n, ast.ClassDef):
            out[n.name] = ("class", n)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[n.name] = ("func", n)
        elif isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = ("value", n.value)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            out[n.target.id] = ("value", n.value)
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.asname:
                    out[a.asname] = ("module", a.name)
                else:
                    top = a.name.split(".")[0]
                    out[top] = ("module", top)
        elif isinstance(n, ast.ImportFrom):
            src = module.absolute(n)
            for a in n.names:
                if a.name != "*":
                    out[a.asname or a.name] = ("import", src, a.name)
    return out


def _walk_function(body: list[ast.stmt]):
    stack = list(reversed(body))
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for child in reversed(list(ast.iter_child_nodes(n))):
            if isinstance(child, ast.stmt):
                stack.append(child)


class World:
    """Top-level package name -> SourceTree: how `import X` finds X here."""

    def __init__(self, trees: dict[str, SourceTree]) -> None:
        self.trees = trees

    def module(self, dotted: str) -> Module | None:
        tree = self.trees.get(dotted.split(".")[0])
        return tree.module(dotted) if tree is not None else None

    def owns(self, dotted: str) -> bool:
        return dotted.split(".")[0] in self.trees
