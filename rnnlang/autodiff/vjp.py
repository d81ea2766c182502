"""VJP rules, one per op: given an equation and its output cotangent, emit IR for the input
cotangents (None where an input gets none). Rules only emit IR; they never evaluate."""

from __future__ import annotations

from collections.abc import Callable

from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import Const, Eqn, Operand, Var
from rnnlang.ir.types import Dim
from rnnlang.lower.builder import Builder

Cot = Var | None
Rule = Callable[[Builder, Eqn, Var], list[Cot]]


def unbroadcast(b: Builder, g: Var, x: Operand) -> Cot:
    """Sum a cotangent back to the shape of an operand that was broadcast."""
    if isinstance(x, Const):
        return None
    if g.shape == x.shape:
        return g
    return b.emit("sum_to", (g,), None, f"d_{x.name}", {"shape": x.shape})


def _e(b: Builder, op: str, *xs: Operand, **attrs: object) -> Var:
    return b.emit(op, tuple(xs), None, "d", dict(attrs) or None)


def _add(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    return [unbroadcast(b, g, x) for x in e.inputs]


def _sub(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    x, y = e.inputs
    return [unbroadcast(b, g, x), None if isinstance(y, Const) else unbroadcast(
        b, _e(b, "neg", g), y)]


def _mul(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    x, y = e.inputs
    dx = None if isinstance(x, Const) else unbroadcast(b, _e(b, "mul", g, y), x)
    dy = None if isinstance(y, Const) else unbroadcast(b, _e(b, "mul", g, x), y)
    return [dx, dy]


def _div(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    x, y = e.inputs
    out = e.outputs[0]
    dx = None if isinstance(x, Const) else unbroadcast(b, _e(b, "div", g, y), x)
    dy = None
    if not isinstance(y, Const):
        dy = unbroadcast(b, _e(b, "neg", _e(b, "div", _e(b, "mul", g, out), y)), y)
    return [dx, dy]


def _by_input(deriv: str) -> Rule:
    """g * f'(x) where f' is a pointwise helper of the input."""
    return lambda b, e, g: [_e(b, "mul", g, _e(b, deriv, e.inputs[0]))]


def _select(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    m, x, y = e.inputs
    zero = Const(0.0)
    dx = None if isinstance(x, Const) else unbroadcast(b, _e(b, "select", m, g, zero), x)
    dy = None if isinstance(y, Const) else unbroadcast(b, _e(b, "select", m, zero, g), y)
    return [None, dx, dy]


def _matmul(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    a, w = e.inputs
    return [_e(b, "matmul_nt", g, w), _e(b, "matmul_tn", a, g)]


def _slice(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    (a,) = e.inputs
    return [_e(b, "pad", g, start=e.attr("start"), total=a.shape[-1])]


def _concat(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    out: list[Cot] = []
    start = Dim()
    for x in e.inputs:
        stop = start + x.shape[-1]
        out.append(_e(b, "slice", g, start=start, stop=stop))
        start = stop
    return out


def _conv1d(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    x, w, bias = e.inputs
    a = dict(e.attrs)
    dx = _e(b, "conv1d_dx", g, w, stride=a["stride"], padding=a["padding"], time=x.shape[0])
    dw = _e(b, "conv1d_dw", x, g, kernel=a["kernel"], stride=a["stride"], padding=a["padding"])
    return [dx, dw, unbroadcast(b, g, bias)]


RULES: dict[str, Rule] = {
    "add": _add,
    "sub": _sub,
    "mul": _mul,
    "div": _div,
    "neg": lambda b, e, g: [_e(b, "neg", g)],
    "identity": lambda b, e, g: [g],
    "tanh": lambda b, e, g: [_e(b, "d_tanh", g, e.outputs[0])],
    "sigmoid": lambda b, e, g: [_e(b, "d_sigmoid", g, e.outputs[0])],
    "relu": _by_input("d_relu"),
    "softsign": _by_input("d_softsign"),
    "hard_sigmoid": _by_input("d_hard_sigmoid"),
    "abs": _by_input("d_abs"),
    "elu": _by_input("d_elu"),
    "gelu": _by_input("d_gelu"),
    "softplus": _by_input("sigmoid"),
    "exp": lambda b, e, g: [_e(b, "mul", g, e.outputs[0])],
    "log": lambda b, e, g: [_e(b, "div", g, e.inputs[0])],
    "sqrt": lambda b, e, g: [_e(b, "div", _e(b, "mul", g, Const(0.5)), e.outputs[0])],
    "square": lambda b, e, g: [_e(b, "mul", _e(b, "mul", g, Const(2.0)), e.inputs[0])],
    "select": _select,
    "matmul": _matmul,
    "slice": _slice,
    "concat": _concat,
    "pad": lambda b, e, g: [_e(b, "slice", g, start=e.attr("start"),
                                stop=e.attr("start") + e.inputs[0].shape[-1])],
    "zeros": lambda b, e, g: [],
    "last": lambda b, e, g: [_e(b, "last_vjp", g, e.inputs[1], time=e.inputs[0].shape[0]),
                             None],
    "mean": lambda b, e, g: [_e(b, "mean_vjp", g, e.inputs[1]), None],
    "reverse": lambda b, e, g: [_e(b, "reverse", g, e.inputs[1]), None],
    "repeat": lambda b, e, g: [_e(b, "sum_time", g)],
    "conv1d": _conv1d,
}


def vjp(b: Builder, e: Eqn, g: Var) -> list[Cot]:
    rule = RULES.get(e.op)
    if rule is None:
        raise InternalCompilerError(f"no VJP rule for op '{e.op}'")
    return rule(b, e, g)
