"""AST of a `.rnn` file: plain frozen dataclasses, every node with its `Span`."""

from __future__ import annotations

from dataclasses import dataclass

from rnnlang.diagnostics import Source, Span


@dataclass(frozen=True, slots=True)
class LinDim:
    """A dimension written as a linear form: sum(coeff * name) + const (e.g. ``4*H``)."""

    terms: tuple[tuple[str, int], ...]
    const: int
    span: Span


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    span: Span
    func_span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    op: str  # one of + - * / @
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Index:
    """``base[index]``: a time delay such as ``s[t-1]``."""

    base: Expr
    index: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Slice:
    """``base[start:stop]`` over the feature axis."""

    base: Expr
    start: Expr | None
    stop: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Over:
    """``layer over seq [from enc]``: apply a layer along a sequence."""

    layer: Expr
    seq: Expr
    init: Expr | None
    span: Span


Expr = Num | Name | Call | BinOp | Neg | Index | Slice | Over


@dataclass(frozen=True, slots=True)
class Init:
    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr], ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    dim: LinDim
    span: Span


@dataclass(frozen=True, slots=True)
class StateDecl:
    name: str
    dim: LinDim
    init: Init | None
    span: Span


@dataclass(frozen=True, slots=True)
class ParamDecl:
    name: str
    dims: tuple[LinDim, ...]
    init: Init | None
    span: Span


@dataclass(frozen=True, slots=True)
class FnDecl:
    name: str
    default: str
    span: Span
    default_span: Span


@dataclass(frozen=True, slots=True)
class Assign:
    targets: tuple[tuple[str, Span], ...]
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class InputDecl:
    name: str
    kind: str  # "seq" or "vec"
    dim: LinDim
    span: Span
    kind_span: Span


@dataclass(frozen=True, slots=True)
class OutputDecl:
    name: str
    value: Expr
    span: Span


CellStmt = StateDecl | ParamDecl | FnDecl | Assign
ModelStmt = InputDecl | ParamDecl | OutputDecl | Assign


@dataclass(frozen=True, slots=True)
class CellDef:
    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    body: tuple[CellStmt, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class DimParam:
    name: str
    default: int | None
    span: Span


@dataclass(frozen=True, slots=True)
class ModelDef:
    name: str
    dims: tuple[DimParam, ...]
    body: tuple[ModelStmt, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Import:
    path: str
    span: Span


@dataclass(frozen=True, slots=True)
class Str:
    """A string value in a ``train`` section (a file path)."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class TrainSet:
    """``key [sub] = value [: suffix [* weight]]`` in a train section, e.g. ``epochs = 20``,
    ``target y = labels``, ``loss y = xent : last * 0.5``."""

    key: str
    sub: str | None
    value: Expr | Str
    suffix: str | None
    weight: float | None
    span: Span
    key_span: Span
    sub_span: Span | None
    suffix_span: Span | None


@dataclass(frozen=True, slots=True)
class TrainDef:
    """``train [MODEL] { ... }``: training settings; no model name means the file's first."""

    model: str | None
    body: tuple[TrainSet, ...]
    span: Span
    model_span: Span | None


@dataclass(frozen=True, slots=True)
class Module:
    source: Source
    imports: tuple[Import, ...]
    cells: tuple[CellDef, ...]
    models: tuple[ModelDef, ...]
    trains: tuple[TrainDef, ...] = ()


def expr_children(e: Expr) -> tuple[Expr, ...]:
    match e:
        case BinOp(left=a, right=b):
            return (a, b)
        case Neg(operand=a):
            return (a,)
        case Call(args=args, kwargs=kw):
            return args + tuple(v for _, v in kw)
        case Index(base=a, index=i):
            return (a, i)
        case Slice(base=a, start=s, stop=p):
            return tuple(x for x in (a, s, p) if x is not None)
        case Over(layer=lay, seq=s, init=i):
            return tuple(x for x in (lay, s, i) if x is not None)
    return ()
