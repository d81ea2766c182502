"""Parameter initializers: checked here, applied by `rnnlang.runtime.init` at bind time."""

from __future__ import annotations

from typing import Protocol

from rnnlang.diagnostics import did_you_mean, error
from rnnlang.ir.nodes import InitSpec
from rnnlang.syntax import ast

# name -> (argument names with defaults, minimum rank)
INITIALIZERS: dict[str, tuple[tuple[tuple[str, float | None], ...], int]] = {
    "zeros": ((), 0),
    "ones": ((), 0),
    "constant": ((("value", None),), 0),
    "normal": ((("mean", 0.0), ("std", 0.1)), 0),
    "uniform": ((("low", -0.1), ("high", 0.1)), 0),
    "glorot": ((("gain", 1.0),), 2),
    "orthogonal": ((("gain", 1.0),), 2),
    "identity": ((("gain", 1.0),), 2),
}


class _HasDim(Protocol):
    def dim(self, e: ast.Expr) -> object: ...


def _number(e: ast.Expr) -> float:
    match e:
        case ast.Num(value=v):
            return v
        case ast.Neg(operand=ast.Num(value=v)):
            return -v
    raise error("E501", "initializer arguments must be numbers", e.span)


def lower_init(init: ast.Init | None, rank: int, outer: object,
               allow_learnable: bool = False) -> InitSpec:
    if init is None:  # the default, with its default arguments (the runtime reads them)
        name = "glorot" if rank >= 2 else "zeros"
        return InitSpec(name, tuple(float(v) for _, v in INITIALIZERS[name][0] if v is not None))
    if init.name == "learnable" and allow_learnable:
        return InitSpec("learnable")
    if init.name not in INITIALIZERS:
        names = list(INITIALIZERS) + (["learnable"] if allow_learnable else [])
        raise error("E502", f"unknown initializer '{init.name}'", init.span,
                    hint=did_you_mean(init.name, names) or "one of " + ", ".join(names))
    spec, min_rank = INITIALIZERS[init.name]
    if rank < min_rank:
        raise error("E503", f"'{init.name}' needs a matrix parameter", init.span,
                    hint="use zeros, constant(...), normal(...) or uniform(...) for vectors")
    if len(init.args) > len(spec):
        raise error("E504", f"'{init.name}' takes at most {len(spec)} argument(s)", init.span)
    values: dict[str, float | None] = dict(spec)
    for (name, _), a in zip(spec, init.args, strict=False):
        values[name] = _number(a)
    for k, a in init.kwargs:
        if k not in values:
            raise error("E504", f"'{init.name}' has no argument '{k}'", a.span,
                        hint=did_you_mean(k, list(values)) or (
                            f"its arguments are {', '.join(values)}" if values else
                            f"'{init.name}' takes no arguments"))
        values[k] = _number(a)
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise error("E504", f"'{init.name}' needs {', '.join(missing)}", init.span)
    return InitSpec(init.name, tuple(float(v) for v in values.values() if v is not None))
