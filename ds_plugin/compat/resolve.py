"""Static name resolution over a `World`: what an expression in some module refers to.

It follows imports (relative, re-exports through `__init__`, star imports, vLLM's lazy
`MODULE_ATTRS`), class bases (a C3 order over the classes it can see), and ds-plugin's
seam idiom: `V = _vllm.quant_api()`, a function returning `SimpleNamespace(Name=Name)`
whose values are vLLM names imported inside it. What it cannot see (a name computed at
run time) resolves to None, and callers skip it rather than guess.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ds_plugin.compat.sources import Module, World, _top_level, bindings_of

_MAX_DEPTH = 40


@dataclass(frozen=True, eq=False)
class Ref:
    """What a name refers to. kind: module, class, func, value (an attribute or constant
    that exists), namespace (a SimpleNamespace a seam function returns), instance (of the
    class `owner`), external (outside every tree of the World: torch, pydantic, ...)."""
    kind: str
    qualname: str  # "vllm.a.b:Class.method", or the dotted name of a module / external
    module: Module | None = None
    node: ast.AST | None = None
    owner: Ref | None = None  # the class a method or attribute was found on
    scope: Scope | None = None  # namespace: the function scope its values resolve in
    via: str | None = None  # a member reached through an "instance" or a "class"

    @property
    def top(self) -> str:
        return self.qualname.split(".")[0].split(":")[0]


@dataclass(eq=False)
class Scope:
    """Names visible in a module, or inside one function of it (its imports and
    assignments, flow-insensitively), plus the class a method belongs to."""
    module: Module
    local: dict[str, tuple] = field(default_factory=dict)
    cls: Ref | None = None


def function_scope(module: Module, fn: ast.FunctionDef, cls: Ref | None = None,
                   outer: Scope | None = None) -> Scope:
    """A function's names; in a method of `cls`, its first parameter is the instance (or
    the class, for a classmethod) and `super()` works."""
    local = dict(outer.local) if outer is not None else {}
    local.update(bindings_of(fn.body, module, deep=True))
    deco = {d.id for d in fn.decorator_list if isinstance(d, ast.Name)}
    first = [*fn.args.posonlyargs, *fn.args.args][:1]
    if cls is not None and first and "staticmethod" not in deco:
        local[first[0].arg] = ("cls" if "classmethod" in deco else "self", cls)
    return Scope(module, local, cls)


class Resolver:
    def __init__(self, world: World) -> None:
        self.world = world
        self._mro: dict[int, list[Ref]] = {}

    # -- names -------------------------------------------------------------------------
    def module_ref(self, dotted: str) -> Ref | None:
        if not self.world.owns(dotted):
            return Ref("external", dotted)
        m = self.world.module(dotted)
        return Ref("module", dotted, m, m.tree) if m is not None else None

    def lookup(self, module: Module, name: str, depth: int = 0) -> Ref | None:
        """`module.name`, as `from module import name` would find it."""
        if depth > _MAX_DEPTH:
            return None
        b = module.bindings.get(name)
        if b is not None:
            return self._binding(module, name, b, Scope(module), depth)
        sub = self.world.module(f"{module.name}.{name}") if module.is_package else None
        if sub is not None:
            return Ref("module", sub.name, sub, sub.tree)
        lazy = module.lazy_table().get(name)
        if lazy is not None:
            mod, _, attr = lazy.partition(":")
            target = self.module_ref(mod)
            return self.member(target, attr, depth + 1) if target is not None else None
        for star in module.star_imports():
            m = self.world.module(star)
            found = self.lookup(m, name, depth + 1) if m is not None else None
            if found is not None:
                return found
        return None

    def _binding(self, module: Module, name: str, b: tuple, scope: Scope, depth: int):
        kind = b[0]
        if kind == "self":
            return Ref("instance", b[1].qualname, b[1].module, b[1].node, owner=b[1])
        if kind == "cls":
            return b[1]
        if kind == "class":
            return Ref("class", f"{module.name}:{name}", module, b[1])
        if kind == "func":
            return Ref("func", f"{module.name}:{name}", module, b[1], owner=scope.cls)
        if kind == "module":
            return self.module_ref(b[1])
        if kind == "import":
            src, attr = b[1], b[2]
            if not self.world.owns(src):
                return Ref("external", f"{src}.{attr}")
            target = self.module_ref(src)
            return self.member(target, attr, depth + 1) if target is not None else None
        value = b[1]
        found = self.eval(value, scope, depth + 1) if value is not None else None
        return found or Ref("value", f"{module.name}:{name}", module, value)

    # -- expressions -------------------------------------------------------------------
    def eval(self, expr: ast.AST, scope: Scope, depth: int = 0) -> Ref | None:
        if depth > _MAX_DEPTH:
            return None
        if isinstance(expr, ast.Name):
            b = scope.local.get(expr.id)
            if b is not None and b[0] == "value":  # a local: only what it was assigned
                return self.eval(b[1], scope, depth + 1) if b[1] is not None else None
            if b is not None:
                return self._binding(scope.module, expr.id, b, scope, depth + 1)
            return self.lookup(scope.module, expr.id, depth + 1)
        if isinstance(expr, ast.Attribute):
            base = self.eval(expr.value, scope, depth + 1)
            return self.member(base, expr.attr, depth + 1) if base is not None else None
        if isinstance(expr, ast.Subscript):  # Base[T] is Base; AnEnum["NAME"] a member
            base = self.eval(expr.value, scope, depth + 1)
            if base is not None and base.kind == "class" and self.is_enum(base):
                return Ref("instance", base.qualname, base.module, base.node, owner=base)
            return base
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Name) and expr.func.id == "super" and scope.cls:
                return Ref("super", scope.cls.qualname, owner=scope.cls)
            fn = self.eval(expr.func, scope, depth + 1)
            if fn is None:
                return None
            if fn.kind == "class":
                return Ref("instance", fn.qualname, fn.module, fn.node, owner=fn)
            if fn.kind == "func":
                return self._returned_namespace(fn)
        return None

    def _returned_namespace(self, fn: Ref) -> Ref | None:
        for n in ast.walk(fn.node):
            if (isinstance(n, ast.Return) and isinstance(n.value, ast.Call)
                    and _callee_name(n.value.func) == "SimpleNamespace"):
                return Ref("namespace", fn.qualname + "()", fn.module, n.value,
                           scope=function_scope(fn.module, fn.node))
        return None

    def member(self, base: Ref | None, attr: str, depth: int = 0) -> Ref | None:
        if base is None or depth > _MAX_DEPTH:
            return None
        if base.kind == "module":
            return self.lookup(base.module, attr, depth + 1)
        if base.kind == "external":
            return Ref("external", f"{base.qualname}.{attr}")
        if base.kind == "namespace":
            for kw in base.node.keywords:
                if kw.arg == attr:
                    return self.eval(kw.value, base.scope, depth + 1)
            return None
        if base.kind in ("class", "instance", "super"):
            cls = base if base.kind == "class" else base.owner
            found = self.find_member(cls, attr, after=cls if base.kind == "super" else None)
            if found is None:
                return None
            if found.kind == "value" and isinstance(found.node, ast.ClassDef):
                return Ref("class", found.qualname, found.module, found.node)
            via = "class" if base.kind == "class" else "instance"
            return Ref(found.kind, found.qualname, found.module, found.node,
                       owner=found.owner, via=via)
        return None

    # -- classes -----------------------------------------------------------------------
    def bases(self, cls: Ref) -> list[Ref]:
        out = []
        for b in cls.node.bases:
            r = self.eval(b, Scope(cls.module))
            if r is not None and r.kind in ("class", "external"):
                out.append(r)
        return out

    def mro(self, cls: Ref, depth: int = 0) -> list[Ref]:
        """C3 order of the classes visible from `cls` (externals end their branch)."""
        key = id(cls.node)
        if key in self._mro:
            return self._mro[key]
        self._mro[key] = [cls]  # a cycle (bad source) ends here
        if depth > _MAX_DEPTH:
            return [cls]
        seqs = [self.mro(b, depth + 1) if b.kind == "class" else [b] for b in self.bases(cls)]
        seqs.append([b for b in self.bases(cls)])
        out = [cls]
        seqs = [list(s) for s in seqs if s]
        while seqs:
            for s in seqs:
                head = s[0]
                if not any(_same(head, t) for other in seqs for t in other[1:]):
                    break
            else:  # inconsistent order: fall back to depth-first
                head = seqs[0][0]
            out.append(head)
            seqs = [[x for x in s if not _same(x, head)] for s in seqs]
            seqs = [s for s in seqs if s]
        self._mro[key] = out
        return out

    def is_enum(self, cls: Ref) -> bool:
        return any(c.kind == "external" and c.qualname.startswith("enum.") for c in self.mro(cls))

    def find_member(self, cls: Ref, attr: str, after: Ref | None = None) -> Ref | None:
        """`attr` on the first class of cls's MRO that defines it (after `after`, as
        super() does). A method's Ref has the defining class as owner; a name assigned
        in the class body or on `self` in a method is a value."""
        mro = self.mro(cls)
        if after is not None:
            idx = next((i for i, c in enumerate(mro) if _same(c, after)), None)
            mro = mro[idx + 1:] if idx is not None else []
        for c in mro:
            if c.kind != "class":
                continue
            body = class_body(c.node)
            if attr in body:
                kind, node = body[attr]
                q = f"{c.qualname}.{attr}"
                return Ref("func" if kind == "func" else "value", q, c.module, node, owner=c)
        for c in mro:
            if c.kind == "class" and attr in instance_attributes(c.node):
                return Ref("value", f"{c.qualname}.{attr}", c.module, None, owner=c)
        return None


def class_body(node: ast.ClassDef) -> dict[str, tuple[str, ast.AST | None]]:
    """Names a class body defines: methods ("func") and assigned or annotated names."""
    out: dict[str, tuple[str, ast.AST | None]] = {}
    for n in _top_level(node.body):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not any(_callee_name(d).endswith("setter") or _callee_name(d).endswith("deleter")
                       for d in n.decorator_list):
                if _is_overload(n):  # the implementation after the overloads wins
                    out.setdefault(n.name, ("func", n))
                else:
                    out[n.name] = ("func", n)
        elif isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = ("value", n)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            out[n.target.id] = ("value", n)
        elif isinstance(n, ast.ClassDef):
            out[n.name] = ("value", n)
    return out


def instance_attributes(node: ast.ClassDef) -> set[str]:
    """Names its methods assign on `self` (`self.x = ...`, `self.x: T = ...`)."""
    out = set()
    for fn in node.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.args.args:
            continue
        me = fn.args.args[0].arg
        for n in ast.walk(fn):
            targets = (n.targets if isinstance(n, ast.Assign)
                       else [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else [])
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if (isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name)
                            and el.value.id == me):
                        out.add(el.attr)
    return out


def _is_overload(fn: ast.FunctionDef) -> bool:
    return any(_callee_name(d) == "overload" for d in fn.decorator_list)


def _callee_name(expr: ast.AST) -> str:
    if isinstance(expr, ast.Call):
        expr = expr.func
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return expr.id if isinstance(expr, ast.Name) else ""


def _same(a: Ref, b: Ref) -> bool:
    return a.qualname == b.qualname and a.kind == b.kind
