"""One release's report: ds-plugin's uses of vLLM checked against that release's sources,
and (given a reference, the release ds-plugin is executed against) what changed since."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from ds_plugin.compat.compare import ERROR, NOTE, accepts, diff, override_problems
from ds_plugin.compat.resolve import Ref, Resolver, class_body
from ds_plugin.compat.sigs import (KW_ONLY, POS, POS_ONLY, Sig, call_problems, constructor_sig,
                                   function_sig, module_function_sig)
from ds_plugin.compat.sources import SourceTree, World
from ds_plugin.compat.uses import Uses, collect

MODEL_PROTOCOL = ("vllm.model_executor.models.interfaces_base", "VllmModelForTextGeneration")


@dataclass(frozen=True)
class Finding:
    level: str  # ERROR (ds-plugin would break) or NOTE (worth a look)
    ours: str  # where in ds-plugin
    symbol: str  # the vLLM symbol
    message: str
    before: str = ""  # the symbol's signature in the reference release
    after: str = ""  # ... and in this one

    @property
    def key(self) -> tuple:
        return self.level, self.ours.split(":")[0] if "/" in self.ours else self.ours, \
            self.symbol, self.message


@dataclass
class Report:
    release: str
    reference: str | None
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        against = f" (changes since {self.reference})" if self.reference else ""
        verdict = "OK" if self.ok else f"INCOMPATIBLE ({len(self.errors)} errors)"
        checked = ", ".join(f"{v} {k}" for k, v in self.counts.items())
        lines = [f"{self.release}{against}: {verdict}", f"  checked: {checked}"]
        for f in sorted(self.findings, key=lambda f: (f.level != ERROR, f.ours, f.symbol)):
            lines.append(f"  {f.level:5} {f.ours}: {f.symbol}: {f.message}")
            if f.before or f.after:
                lines.append(f"          before: {f.before or '(absent)'}")
                lines.append(f"          now:    {f.after or '(absent)'}")
        return "\n".join(lines)


def tree_version(tree: SourceTree) -> str | None:
    """vLLM's `__version__` as its `_version.py` states it."""
    m = tree.module("vllm._version")
    for n in ast.walk(m.tree) if m else ():
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and any(
                isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets):
            return str(n.value.value)
    return None


def check(ours: SourceTree, release: SourceTree, reference: SourceTree | None = None) -> Report:
    """ds-plugin's sources `ours` against vLLM `release`; with `reference`, what moved
    between the reference and the release is reported too (and a note the reference
    already shows is not repeated: its own report shows it)."""
    uses = collect(ours)
    rel = _Checker(uses, World({"ds_plugin": ours, "vllm": release}), None)
    if reference is None:
        findings = rel.run()
    else:
        ref = _Checker(uses, World({"ds_plugin": ours, "vllm": reference}), None)
        rel.ref = ref.res
        already = {f.key for f in ref.run()}
        # Errors stay (a release with one is not OK, whatever the reference shows).
        findings = [f for f in rel.run() if f.level == ERROR or f.key not in already]
    name = f"vLLM {tree_version(release) or '?'} ({release.label})"
    ref_name = f"vLLM {tree_version(reference) or '?'} ({reference.label})" if reference else None
    return Report(name, ref_name, _dedupe(findings), rel.counts)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: dict[tuple, Finding] = {}
    for f in findings:
        k = (f.level, f.symbol, f.message, f.before, f.after)
        if k in seen:
            prev = seen[k]
            if f.ours not in prev.ours.split(", "):
                seen[k] = Finding(f.level, f"{prev.ours}, {f.ours}", f.symbol, f.message,
                                  f.before, f.after)
        else:
            seen[k] = f
    return list(seen.values())


def _vllm(ref: Ref | None) -> bool:
    return ref is not None and ref.top == "vllm"


class _Checker:
    def __init__(self, uses: Uses, world: World, ref: Resolver | None) -> None:
        self.uses, self.res, self.ref = uses, Resolver(world), ref
        self.out: list[Finding] = []
        self.counts = {"imported names": 0, "classes on vLLM bases": 0, "overrides": 0,
                       "calls": 0, "attributes": 0, "patch targets": 0}

    def add(self, level, ours, symbol, message, before: Sig | str = "", after: Sig | str = ""):
        self.out.append(Finding(level, ours, symbol, message, str(before or ""), str(after or "")))

    def run(self) -> list[Finding]:
        for imp in self.uses.violations:
            self.add(ERROR, imp.where, imp.symbol, "vLLM imported outside the seam (ds_plugin/_vllm)")
        for imp in self.uses.seam_imports:
            self.counts["imported names"] += 1
            mod = self.res.module_ref(imp.module)
            if mod is None:
                self.add(ERROR, imp.where, imp.symbol, f"module {imp.module} not found")
            elif imp.name and self.res.lookup(mod.module, imp.name) is None:
                self.add(ERROR, imp.where, imp.symbol, f"{imp.name} not found in {imp.module}")
        for cls in self.uses.classes:
            self._class(cls)
        for target in self.uses.models:
            self._model(target)
        for site in self.uses.sites:
            self._site(site)
        for dotted, where in self.uses.patch_targets:
            self._patch(dotted, where)
        return self.out

    # -- overrides -----------------------------------------------------------------------
    def _vllm_member(self, res: Resolver, cls: Ref, name: str) -> Ref | None:
        """`name` on the first vLLM class in cls's MRO that defines it."""
        found = None
        for c in res.mro(cls)[1:]:
            if c.kind == "class" and c.top == "vllm":
                found = res.find_member(c, name)
                if found is not None:
                    return found
        return found

    def _class(self, cls: Ref) -> None:
        mro = self.res.mro(cls)
        if not any(c.kind == "class" and _vllm(c) for c in mro):
            return
        self.counts["classes on vLLM bases"] += 1
        where = f"{cls.qualname}"
        for name, (kind, node) in class_body(cls.node).items():
            now = self._vllm_member(self.res, cls, name)
            before = self._vllm_member(self.ref, cls, name) if self.ref else now
            self._override(f"{where}.{name}", kind, node, before, now)
        self._abstract(cls, mro)

    def _override(self, where, kind, node, before: Ref | None, now: Ref | None) -> None:
        if before is None and now is None:
            return
        self.counts["overrides"] += 1
        if now is None:
            what = "our override is never called" if kind == "func" else "our setting is unused"
            self.add(ERROR, where, before.qualname, f"gone from vLLM's bases ({what})",
                     _sig(before), "")
            return
        if before is None:
            self.add(ERROR, where, now.qualname, "new in vLLM: ours now overrides it", "", _sig(now))
            return
        b, a = _sig(before), _sig(now)
        if kind != "func" or not isinstance(a, Sig):
            if isinstance(b, Sig) != isinstance(a, Sig):
                self.add(ERROR, where, now.qualname, "changed between method and attribute", b, a)
            return
        mine = function_sig(node)
        passed = set()
        if node.name != "__init__":  # vLLM builds few of our classes; super() calls are checked
            passed = self._callers_passing(where, node.name, now.qualname, mine, a)
        if isinstance(b, Sig):
            for level, msg in diff(b, a, mine):
                if not any(msg.startswith(f"new optional parameter {p!r}") for p in passed):
                    self.add(level, where, now.qualname, msg, b, a)
        if node.name != "__init__":
            new = ({p.name for p in a.params} - {p.name for p in b.params}
                   if isinstance(b, Sig) else set())
            for level, msg in override_problems(mine, a):
                # a new parameter's note is the diff's (or the caller's error) already
                if not any(msg.startswith(f"vLLM may pass {p!r}") for p in new | passed):
                    self.add(level, where, now.qualname, msg, mine, a)

    def _callers_passing(self, where: str, method: str, symbol: str, mine: Sig, base: Sig) -> set:
        """An optional parameter of vLLM's method that our override rejects is an error
        once some call in vLLM (to a method of that name) passes it. Returns those."""
        params = base.bound("instance")
        rejected = [p for p in params if p.kind in (POS_ONLY, POS, KW_ONLY) and not p.required
                    and not accepts(mine, p)]
        passed = set()
        if not rejected:
            return passed
        positional = [p.name for p in params if p.kind in (POS_ONLY, POS)]
        for p in rejected:
            for at, call in self.res.world.trees["vllm"].callers("vllm", method):
                if any(isinstance(a, ast.Starred) for a in call.args):
                    continue
                by_kw = any(k.arg == p.name for k in call.keywords)
                by_pos = p.kind != KW_ONLY and len(call.args) > positional.index(p.name)
                if by_kw or by_pos:
                    how = "by keyword" if by_kw else f"as positional argument {len(call.args)}"
                    self.add(ERROR, where, symbol, f"vLLM passes {p.name!r} {how} ({at}); "
                             "our override does not accept it", mine, base)
                    passed.add(p.name)
                    break
        return passed

    def _abstract(self, cls: Ref, mro: list[Ref]) -> None:
        for c in mro:
            if c.kind != "class" or not _vllm(c):
                continue
            for name, (kind, node) in class_body(c.node).items():
                if kind == "func" and function_sig(node).abstract:
                    first = self.res.find_member(cls, name)
                    if first is not None and first.node is node:
                        self.add(ERROR, cls.qualname, f"{c.qualname}.{name}",
                                 "abstract in vLLM and not implemented", "", function_sig(node))

    def _model(self, target: str) -> None:
        module, _, name = target.partition(":")
        m = self.res.world.module(module)
        node = m and m.bindings.get(name)
        proto_mod = self.res.module_ref(MODEL_PROTOCOL[0])
        proto = self.res.lookup(proto_mod.module, MODEL_PROTOCOL[1]) if proto_mod else None
        symbol = ":".join(MODEL_PROTOCOL)
        if node is None or node[0] != "class":
            self.add(ERROR, "ds_plugin.MODELS", target, "registered model class not found")
            return
        if proto is None:
            self.add(ERROR, target, symbol, "vLLM's model protocol not found")
            return
        ours = Ref("class", target, m, node[1])
        old = None
        if self.ref is not None:
            om = self.ref.module_ref(MODEL_PROTOCOL[0])
            old = self.ref.lookup(om.module, MODEL_PROTOCOL[1]) if om else None
        for c in self.res.mro(proto):
            if c.kind != "class" or not _vllm(c):
                continue
            for pname, (kind, pnode) in class_body(c.node).items():
                if kind != "func":
                    continue
                mine = self.res.find_member(ours, pname)
                before = self.ref.find_member(old, pname) if old is not None else None
                now = self.res.find_member(proto, pname)
                if mine is None or mine.top != "ds_plugin":
                    if _has_default(pnode):  # vLLM looks such methods up with getattr
                        self.add(NOTE, target, f"{c.qualname}.{pname}", "optional model "
                                 "protocol method, not implemented", "", _sig(now))
                    else:
                        self.add(ERROR, target, f"{c.qualname}.{pname}", "model protocol "
                                 "method not implemented", "", _sig(now))
                    continue
                self._override(f"{target}.{pname}", "func", mine.node,
                               before if self.ref else now, now)

    # -- sites ---------------------------------------------------------------------------
    def _site(self, site) -> None:
        ref = self.ref or self.res
        if site.kind == "store":
            self._store(site, ref)
            return
        expr = site.node.func if site.kind == "call" else site.node
        before = ref.eval(expr, site.scope)
        if not _vllm(before) or before.kind == "module":
            return
        now = self.res.eval(expr, site.scope)
        self.counts["calls" if site.kind == "call" else "attributes"] += 1
        label = ast.unparse(expr)
        if now is None:
            self.add(ERROR, site.where, before.qualname, f"{label} no longer resolves", _sig(before))
            return
        if site.kind != "call":
            return
        sig_now = self._callee_sig(now)
        if sig_now is None:
            return
        for msg in call_problems(sig_now[0], sig_now[1], site.node):
            self.add(ERROR, site.where, sig_now[2], f"call {label}(...): {msg}", "", sig_now[0])

    def _callee_sig(self, callee: Ref):
        if callee.kind == "class":
            found = constructor_sig(self.res, callee)
            return (found[0], "instance", found[1]) if found else None
        if callee.kind == "func" and isinstance(callee.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if callee.owner is None:
                return module_function_sig(callee.node), None, callee.qualname
            sig = function_sig(callee.node)
            return (sig, callee.via, callee.qualname) if sig.binding != "property" else None
        return None

    def _store(self, site, ref: Resolver) -> None:
        node = site.node
        if not isinstance(node.value, ast.Name):
            return
        b = site.scope.local.get(node.value.id)
        if b is None or b[0] != "self":
            return
        before = self._vllm_member(ref, b[1], node.attr)
        if before is None:
            return
        self.counts["attributes"] += 1
        if self._vllm_member(self.res, b[1], node.attr) is None:
            self.add(ERROR, site.where, before.qualname, f"we set self.{node.attr}, which "
                     "vLLM no longer defines (the setting is unused)")

    def _patch(self, dotted: str, where: str) -> None:
        self.counts["patch targets"] += 1
        now = _dotted(self.res, dotted)
        before = _dotted(self.ref, dotted) if self.ref else now
        if now is None:
            self.add(ERROR, where, dotted, "patch target not found", _sig(before) if before else "")
        elif before is not None and isinstance(_sig(before), Sig) and isinstance(_sig(now), Sig):
            for level, msg in diff(_sig(before), _sig(now)):
                self.add(level, where, dotted, f"patch target: {msg}", _sig(before), _sig(now))


def _dotted(res: Resolver, dotted: str) -> Ref | None:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        mod = res.world.module(".".join(parts[:i]))
        if mod is not None:
            ref = Ref("module", mod.name, mod, mod.tree)
            for attr in parts[i:]:
                ref = res.member(ref, attr)
                if ref is None:
                    return None
            return ref
    return None


def _has_default(fn: ast.FunctionDef) -> bool:
    """A protocol method with a body of its own (beyond a docstring and `...`)."""
    body = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return any(not isinstance(n, ast.Pass) for n in body)


def _sig(ref: Ref | None) -> Sig | str:
    if ref is None:
        return ""
    if ref.kind == "func" and isinstance(ref.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return function_sig(ref.node)
    if isinstance(ref.node, (ast.Assign, ast.AnnAssign)):
        return ast.unparse(ref.node)
    return ref.kind
