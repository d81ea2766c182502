"""Helpers shared by cell and model lowering: fresh names and typed equation emission."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rnnlang.diagnostics import Span, error
from rnnlang.ir.nodes import Const, Eqn, Operand, Var
from rnnlang.ir.ops import OPS, ShapeError
from rnnlang.ir.types import Dim, TensorType

_IDENT = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")


@dataclass
class NameGen:
    """Fresh, readable SSA names, unique within one compile (never a global counter)."""

    used: set[str] = field(default_factory=set)
    next_k: dict[str, int] = field(default_factory=dict)  # per hint: no suffix below is free

    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.]", "_", hint) or "v"
        name, k = base, self.next_k.get(base, 1)
        if name in self.used:  # the smallest free suffix (resumed, so many values stay linear)
            name = f"{base}_{k}"
            while name in self.used:
                k += 1
                name = f"{base}_{k}"
            self.next_k[base] = k + 1
        self.used.add(name)
        return name


@dataclass
class Builder:
    """Accumulates equations; every emitted value gets its shape from the op table."""

    names: NameGen
    eqns: list[Eqn] = field(default_factory=list)
    named: set[str] = field(default_factory=set)  # values that already carry a user name

    def var(self, hint: str, shape: tuple[Dim, ...]) -> Var:
        return Var(self.names.fresh(hint), TensorType(tuple(shape)))

    def emit(self, op: str, inputs: tuple[Operand, ...], span: Span | None, hint: str,
             attrs: dict[str, Any] | None = None, comment: str = "") -> Var:
        a = attrs or {}
        try:
            shape = OPS[op].shape(tuple(x.shape for x in inputs), a)
        except ShapeError as exc:
            raise error("E203", str(exc), span) from None
        out = self.var(hint, shape)
        self.eqns.append(Eqn(op, tuple(inputs), (out,), tuple(a.items()), span, comment))
        return out


    def rename(self, var: Var, hint: str) -> Var:
        """Give a freshly computed value the user's name (``i, f, g, o = split(...)``).

        A value that already has a user-visible name (``b = a``) is an alias: renaming it
        would orphan the other references, so it is returned unchanged."""
        if var.name in self.named:
            return var
        for k in range(len(self.eqns) - 1, -1, -1):
            e = self.eqns[k]
            if var in e.outputs:
                new = Var(self.names.fresh(hint), var.type)
                outs = tuple(new if o == var else o for o in e.outputs)
                self.eqns[k] = Eqn(e.op, e.inputs, outs, e.attrs, e.span, e.comment)
                self.named.add(new.name)
                return new
        self.named.add(var.name)
        return var


def unique_name(hint: str, used: set[str]) -> str:
    """``hint``, or ``hint_1``, ``hint_2``... : the first not in ``used`` (which it joins)."""
    name, k = hint, 1
    while name in used:
        name, k = f"{hint}_{k}", k + 1
    used.add(name)
    return name


def is_scalar(x: Operand) -> bool:
    return isinstance(x, Const) or x.shape == ()


def fold(op: str, a: Const, b: Const) -> Const:
    match op:
        case "add":
            return Const(a.value + b.value)
        case "sub":
            return Const(a.value - b.value)
        case "mul":
            return Const(a.value * b.value)
    return Const(a.value / b.value if b.value else float("inf"))


def valid_identifier(name: str) -> bool:
    return bool(_IDENT.fullmatch(name))
