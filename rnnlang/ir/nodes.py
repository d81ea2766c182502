"""IR nodes: values, equations, regions, scans and programs.

A `Program` is a flat SSA list of `Eqn`s over whole tensors. The time loop is an `Eqn` whose op
is ``scan``; its `ScanSpec` says how the loop body (a `Region`, itself a flat SSA list over one
time step) reads from and writes to time-indexed arrays. Both the forward recurrence and the
derived BPTT loop are scans, so one interpreter and one code generator serve both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rnnlang.diagnostics import Span
from rnnlang.ir.types import Dim, TensorType


@dataclass(frozen=True, slots=True)
class Var:
    name: str
    type: TensorType

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Const:
    """A scalar literal operand."""

    value: float

    @property
    def shape(self) -> tuple[Dim, ...]:
        return ()

    def __str__(self) -> str:
        return repr(float(self.value))


Operand = Var | Const


@dataclass(frozen=True, slots=True)
class Eqn:
    op: str
    inputs: tuple[Operand, ...]
    outputs: tuple[Var, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)
    comment: str = field(default="", compare=False)

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Region:
    """A loop body: inputs bound per step by the enclosing scan, SSA equations, outputs."""

    inputs: tuple[Var, ...]
    eqns: tuple[Eqn, ...]
    outputs: tuple[Var, ...]


@dataclass(frozen=True, slots=True)
class Tap:
    """Body input read from a time-indexed array at ``t + offset``.

    ``source`` is ``("in", i)`` for the scan's i-th input sequence or ``("out", j)`` for its
    j-th written array (a recurrent state reading its own past). Out of range, the value is
    the scan input ``fallback`` (an index into ``eqn.inputs``) or zeros when None.
    """

    source: tuple[str, int]
    offset: int
    fallback: int | None = None


@dataclass(frozen=True, slots=True)
class ConstRef:
    """Body input bound to a loop-invariant scan input (``eqn.inputs[index]``)."""

    index: int


@dataclass(frozen=True, slots=True)
class Store:
    """Body output written to written array ``array`` at ``t + offset``.

    With ``accumulate`` the value is added; out of range it is added into spill output
    ``spill`` (an index among the scan's spill outputs) or dropped when None.
    """

    array: int
    offset: int = 0
    accumulate: bool = False
    spill: int | None = None


@dataclass(frozen=True, slots=True)
class SumTo:
    """Body output summed over all time steps into the scan's ``index``-th sum output."""

    index: int


@dataclass(frozen=True, slots=True)
class OutArray:
    """A written (T, B, n) array; ``init`` is the index of a scan input copied in first."""

    name: str
    init: int | None = None


@dataclass(frozen=True, slots=True)
class ScanSpec:
    """How a scan's body is wired.

    Scan eqn inputs: ``n_seq`` read-only sequences first, then loop-invariant values. Outputs:
    one per `OutArray`, then one per sum, then one per spill.
    """

    time: Dim
    reverse: bool
    n_seq: int
    arrays: tuple[OutArray, ...]
    n_sums: int
    n_spills: int
    body: Region
    in_bind: tuple[Tap | ConstRef, ...]
    out_bind: tuple[Store | SumTo, ...]


@dataclass(frozen=True, slots=True)
class InitSpec:
    """How a parameter is initialized: a named initializer with numeric arguments."""

    name: str
    args: tuple[float, ...] = ()
    fan: tuple[int, ...] = ()  # axes taken as (fan_in, fan_out) for glorot-style inits


@dataclass(frozen=True, slots=True)
class Param:
    var: Var
    init: InitSpec
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class InputInfo:
    """A program input and its role: ``seq``, ``vec``, ``mask`` or ``state``."""

    var: Var
    role: str
    time: Dim | None = None  # the time dimension this input runs over (seq / mask)
    optional: bool = False  # states: zeros when not given


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    inputs: tuple[InputInfo, ...]
    params: tuple[Param, ...]
    eqns: tuple[Eqn, ...]
    outputs: tuple[Var, ...]
    output_names: tuple[str, ...]
    dims: tuple[tuple[str, int | None], ...] = ()  # model dims and their defaults
    derived: tuple[tuple[str, str, tuple[Any, ...]], ...] = ()  # (dim, rule, args): e.g. conv T

    @property
    def input_vars(self) -> tuple[Var, ...]:
        return tuple(i.var for i in self.inputs)

    @property
    def param_vars(self) -> tuple[Var, ...]:
        return tuple(p.var for p in self.params)


def walk(eqns: tuple[Eqn, ...]) -> Iterator[Eqn]:
    """All equations, descending into scan bodies."""
    for e in eqns:
        yield e
        spec = e.attr("scan")
        if spec is not None:
            yield from walk(spec.body.eqns)


def all_names(prog: Program) -> set[str]:
    """Every value name used anywhere in a program, scan bodies included."""
    names = {v.name for v in prog.input_vars + prog.param_vars}
    for e in walk(prog.eqns):
        names.update(v.name for v in e.outputs)
        spec = e.attr("scan")
        if spec is not None:
            names.update(v.name for v in spec.body.inputs)
    return names
