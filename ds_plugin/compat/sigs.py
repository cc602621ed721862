"""Signatures read from source: parameters (name, kind, required), how a method is bound
(instance / class / static / property), and whether a call binds to them."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from ds_plugin.compat.resolve import Ref, Resolver, _callee_name, class_body

POS_ONLY, POS, VAR_POS = "positional-only", "positional", "*args"
KW_ONLY, VAR_KW = "keyword-only", "**kwargs"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    required: bool
    annotation: str = ""


@dataclass(frozen=True)
class Sig:
    params: tuple[Param, ...]
    binding: str  # "method", "classmethod", "staticmethod", "property", "function", "fields"
    returns: str = ""
    abstract: bool = False
    text: str = ""  # the parameter list as written

    def __str__(self) -> str:
        deco = {"classmethod": "@classmethod ", "staticmethod": "@staticmethod ",
                "property": "@property "}.get(self.binding, "")
        ret = f" -> {self.returns}" if self.returns else ""
        return f"{deco}({self.text}){ret}"

    def bound(self, via: str | None) -> tuple[Param, ...]:
        """Parameters a caller supplies, reaching the callable through `via`."""
        drop = (self.binding == "method" and via == "instance") or (
            self.binding == "classmethod" and via in ("instance", "class"))
        params = self.params
        if drop and params and params[0].kind in (POS_ONLY, POS):
            params = params[1:]
        return params

    def by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    def accepts_any_keyword(self) -> bool:
        return any(p.kind == VAR_KW for p in self.params)

    def accepts_any_positional(self) -> bool:
        return any(p.kind == VAR_POS for p in self.params)


def _ann(node: ast.AST | None) -> str:
    return ast.unparse(node) if node is not None else ""


def function_sig(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Sig:
    names = {_callee_name(d) for d in fn.decorator_list}
    binding = ("staticmethod" if "staticmethod" in names else
               "classmethod" if "classmethod" in names else
               "property" if names & {"property", "cached_property"} else "method")
    a = fn.args
    params: list[Param] = []
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        params.append(Param(arg.arg, POS_ONLY if i < len(a.posonlyargs) else POS,
                            i < first_default, _ann(arg.annotation)))
    if a.vararg:
        params.append(Param(a.vararg.arg, VAR_POS, False, _ann(a.vararg.annotation)))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(Param(arg.arg, KW_ONLY, default is None, _ann(arg.annotation)))
    if a.kwarg:
        params.append(Param(a.kwarg.arg, VAR_KW, False, _ann(a.kwarg.annotation)))
    return Sig(tuple(params), binding, _ann(fn.returns), "abstractmethod" in names,
               ast.unparse(a))


def module_function_sig(fn: ast.FunctionDef) -> Sig:
    s = function_sig(fn)
    return Sig(s.params, "function", s.returns, s.abstract, s.text)


def constructor_sig(res: Resolver, cls: Ref) -> tuple[Sig, str] | None:
    """What calling class `cls` takes, and where that was read: the first `__init__` in
    its MRO, else the fields of a dataclass / pydantic / msgspec-style class (keyword
    arguments; positional too for a dataclass). None when an external base decides."""
    fields: list[Param] = []
    dataclass_like = False
    for c in res.mro(cls):
        if c.kind != "class":
            ext = c.qualname
            if fields and any(k in ext for k in ("BaseModel", "Struct", "TypedDict", "NamedTuple")):
                break  # a field-declaring external base: the fields are the constructor
            if ext in ("builtins.object", "object") or ext.startswith(("typing.", "abc.", "enum.")):
                continue
            return None
        body = class_body(c.node)
        if "__init__" in body and body["__init__"][0] == "func":
            if fields:
                break  # an __init__ above fields: this reading would guess, so it does not
            return function_sig(body["__init__"][1]), f"{c.qualname}.__init__"
        if any(_callee_name(d) == "dataclass" for d in c.node.decorator_list):
            dataclass_like = True
        own = [n for n in c.node.body if isinstance(n, ast.AnnAssign)
               and isinstance(n.target, ast.Name) and "ClassVar" not in _ann(n.annotation)]
        fields = [Param(n.target.id, POS if dataclass_like else KW_ONLY,
                        n.value is None, _ann(n.annotation)) for n in own] + fields
    if not fields:
        return None
    seen: dict[str, Param] = {}
    for p in fields:  # a subclass's redefinition of a field replaces it in place
        seen.setdefault(p.name, p)
    params = tuple(seen.values())
    text = ", ".join(p.name + ("" if p.required else "=...") for p in params)
    return Sig(params, "fields", "", False, text), f"{cls.qualname} (fields)"


def call_problems(sig: Sig, via: str | None, call: ast.Call) -> list[str]:
    """Why `call` does not bind to `sig` (empty when it does)."""
    params = sig.bound(via)
    splat_pos = any(isinstance(a, ast.Starred) for a in call.args)
    splat_kw = any(k.arg is None for k in call.keywords)
    npos = sum(1 for a in call.args if not isinstance(a, ast.Starred))
    positional = [p for p in params if p.kind in (POS_ONLY, POS)]
    problems = []
    if npos > len(positional) and not any(p.kind == VAR_POS for p in params):
        problems.append(f"{npos} positional arguments, at most {len(positional)} accepted")
    bound = {p.name for p in positional[:npos]}
    by_name = {p.name: p for p in params}
    for k in call.keywords:
        if k.arg is None:
            continue
        p = by_name.get(k.arg)
        if p is None or p.kind in (POS_ONLY, VAR_POS, VAR_KW):
            if not any(q.kind == VAR_KW for q in params):
                problems.append(f"unexpected keyword argument {k.arg!r}")
        elif k.arg in bound:
            problems.append(f"argument {k.arg!r} given positionally and by keyword")
        bound.add(k.arg)
    if not (splat_pos or splat_kw):
        missing = [p.name for p in params if p.required and p.name not in bound
                   and p.kind not in (VAR_POS, VAR_KW)]
        if missing:
            problems.append("missing required argument(s) " + ", ".join(map(repr, missing)))
    return problems
