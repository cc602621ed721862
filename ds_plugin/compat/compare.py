"""Signature comparisons: a vLLM method across two releases, and ours against vLLM's."""

from __future__ import annotations

from ds_plugin.compat.sigs import KW_ONLY, POS, POS_ONLY, VAR_KW, VAR_POS, Param, Sig

ERROR, NOTE = "ERROR", "NOTE"


def _called(sig: Sig) -> tuple[Param, ...]:
    # What a caller passes to the method on an instance (self / cls bound).
    return sig.bound("instance")


def _positional(params) -> list[Param]:
    return [p for p in params if p.kind in (POS_ONLY, POS)]


def diff(before: Sig, after: Sig, ours: Sig | None = None) -> list[tuple[str, str]]:
    """How vLLM's `before` became `after`: (level, message) pairs. A removed parameter, a
    new required one, a changed kind or positional order, a changed binding are errors;
    a new optional parameter, annotation and return changes are notes. `ours` (our
    override) says whether a new optional parameter would reach it."""
    out: list[tuple[str, str]] = []
    if before.binding != after.binding:
        out.append((ERROR, f"was {before.binding}, now {after.binding}"))
        return out
    b, a = _called(before), _called(after)
    bn, an = {p.name: p for p in b}, {p.name: p for p in a}
    for p in b:
        if p.name not in an:
            what = {VAR_POS: "*", VAR_KW: "**"}.get(p.kind, "")
            out.append((ERROR, f"parameter {what}{p.name!r} removed"))
    for p in a:
        if p.name in bn:
            continue
        if p.kind in (VAR_POS, VAR_KW):
            out.append((NOTE, f"now also takes {'*' if p.kind == VAR_POS else '**'}{p.name}"))
        elif p.required:
            out.append((ERROR, f"new required parameter {p.name!r}"))
        else:
            reach = ""
            if ours is not None:
                reach = (" (our override accepts it)" if accepts(ours, p)
                         else " (our override would reject it if vLLM passes it)")
            out.append((NOTE, f"new optional parameter {p.name!r}{reach}"))
    for p in b:
        q = an.get(p.name)
        if q is None:
            continue
        if p.kind != q.kind:
            out.append((ERROR, f"parameter {p.name!r} was {p.kind}, now {q.kind}"))
        elif p.required and not q.required:
            out.append((NOTE, f"parameter {p.name!r} is now optional"))
        elif q.required and not p.required:
            out.append((ERROR, f"parameter {p.name!r} is now required"))
        if p.annotation != q.annotation:
            out.append((NOTE, f"annotation of {p.name!r}: {p.annotation or '-'} -> "
                              f"{q.annotation or '-'}"))
    common = [p.name for p in _positional(b) if p.name in an and an[p.name].kind in (POS_ONLY, POS)]
    pos_a = [p.name for p in _positional(a)]
    if [pos_a.index(n) for n in common] != [[p.name for p in _positional(b)].index(n) for n in common]:
        out.append((ERROR, "positional order changed: "
                           f"({', '.join(p.name for p in _positional(b))}) -> ({', '.join(pos_a)})"))
    if before.returns != after.returns:
        out.append((NOTE, f"return annotation: {before.returns or '-'} -> {after.returns or '-'}"))
    if before.abstract != after.abstract:
        out.append((NOTE, "now abstract" if after.abstract else "no longer abstract"))
    return out


def accepts(ours: Sig, p: Param) -> bool:
    names = {q.name: q for q in _called(ours)}
    if p.kind == KW_ONLY:
        return p.name in names or ours.accepts_any_keyword()
    return p.name in names or ours.accepts_any_positional() or ours.accepts_any_keyword()


def override_problems(ours: Sig, base: Sig) -> list[tuple[str, str]]:
    """Whether vLLM, calling `base` as declared, can call our override instead."""
    out: list[tuple[str, str]] = []
    if ours.binding != base.binding and "property" in (ours.binding, base.binding):
        return [(ERROR, f"ours is a {ours.binding}, vLLM's a {base.binding}")]
    if ours.binding != base.binding and "method" in (ours.binding, base.binding):
        # instance method vs static/class method: what the caller passes first differs
        if not (ours.binding in ("classmethod", "staticmethod")
                and base.binding in ("classmethod", "staticmethod")):
            out.append((ERROR, f"ours is a {ours.binding}, vLLM's a {base.binding}"))
    mine, theirs = _called(ours), _called(base)
    my_pos = _positional(mine)
    my_names = {p.name: p for p in mine if p.kind in (POS, KW_ONLY)}
    matched: set[str] = set()
    for i, p in enumerate(theirs):
        if p.kind in (VAR_POS, VAR_KW):
            continue
        by_position = p.kind in (POS_ONLY, POS) and (i < len(my_pos) or ours.accepts_any_positional())
        by_name = p.kind != POS_ONLY and (p.name in my_names or ours.accepts_any_keyword())
        if p.kind in (POS_ONLY, POS) and i < len(my_pos):
            matched.add(my_pos[i].name)
            if p.kind == POS and my_pos[i].name != p.name:
                out.append((NOTE, f"parameter {i + 1} is {my_pos[i].name!r} in ours, "
                                  f"{p.name!r} in vLLM's (a keyword call would miss it)"))
        if p.name in my_names:
            matched.add(p.name)
        if not (by_position or by_name) or (p.kind == KW_ONLY and not by_name):
            level = ERROR if p.required else NOTE
            verb = "passes" if p.required else "may pass"
            out.append((level, f"vLLM {verb} {p.name!r}; our override does not accept it"))
    for p in mine:
        if p.required and p.kind not in (VAR_POS, VAR_KW) and p.name not in matched:
            out.append((ERROR, f"our override requires {p.name!r}, which vLLM does not pass"))
    return out
