"""Which values of a program depend on each batch row alone.

A call can run as independent slices of the batch (one per thread, no synchronisation inside
the time loop) when every batch row is computed from that row alone, and whatever mixes rows
is a sum over them that flows only through linear operations to an output (weight gradients).
`row_plan` proves this for a program or returns None; the CPU executor then splits a call by
rows, concatenates the per-row outputs and adds up the summed ones.

Each value has a kind: ``row`` (batch axis ``axis``, each row computed from the same row of
the inputs), ``free`` (no batch axis, computed from parameters and constants only) or ``sum``
(a sum over rows; per slice a partial sum). The rules are conservative: anything not listed
makes the program unsplittable, which only costs speed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rnnlang.ir.nodes import Const, ConstRef, Eqn, Operand, Program, ScanSpec, Store, SumTo
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import BATCH, Dim

ROW, FREE, SUM = "row", "free", "sum"
# ops that act on each batch row separately (their operands' other axes are time/features)
_PER_ROW = {"last", "last_vjp", "mean", "mean_vjp", "reverse", "repeat", "shift", "sum_time",
            "conv1d", "conv1d_dx"}
_LINEAR = {"add", "sub", "neg", "identity"}  # pointwise ops that keep a sum a sum


@dataclass(frozen=True)
class Kind:
    kind: str
    axis: int = -1  # the batch axis of a row value


@dataclass(frozen=True)
class RowPlan:
    """How to split a call: the batch axis of each input (None: passed whole) and how to join
    each output (``("concat", axis)``, ``("sum",)``, or ``("first",)`` for row-free ones)."""

    inputs: tuple[int | None, ...]
    outputs: tuple[tuple[str, ...] | tuple[str, int], ...]
    output_kinds: tuple[Kind, ...]


class _Unsplittable(Exception):
    pass


def batch_axis(shape: tuple[Dim, ...]) -> int | None:
    """The axis of size B, None without one; unsplittable if B hides in a compound size."""
    axes = [k for k, d in enumerate(shape) if d == BATCH]
    if any(BATCH.terms[0][0] in d.symbols and d != BATCH for d in shape) or len(axes) > 1:
        raise _Unsplittable
    return axes[0] if axes else None


def _of_shape(shape: tuple[Dim, ...]) -> Kind:
    ax = batch_axis(shape)
    return Kind(FREE) if ax is None else Kind(ROW, ax)


def _row_out(e: Eqn, kinds: list[Kind]) -> Kind:
    """A row-wise result: its batch axis lines up with every row operand's (broadcasting
    aligns trailing axes)."""
    out = e.outputs[0]
    ax = batch_axis(out.shape)
    if ax is None:
        raise _Unsplittable
    for x, k in zip(e.inputs, kinds, strict=True):
        if k.kind == ROW and k.axis + len(out.shape) - len(x.shape) != ax:
            raise _Unsplittable
    return Kind(ROW, ax)


def _eqn(e: Eqn, kinds: list[Kind], env: dict[str, Kind]) -> list[Kind]:
    ks = {k.kind for k in kinds}
    out = e.outputs[0] if e.outputs else None
    if e.op == "scan":
        return _scan(e, kinds, env)
    if ks <= {FREE}:
        if out is not None and batch_axis(out.shape) is not None and e.op != "zeros":
            raise _Unsplittable
        return [_of_shape(v.shape) for v in e.outputs]
    if OPS[e.op].pointwise:
        if SUM in ks:
            consts = [isinstance(x, Const) for x in e.inputs]
            linear = e.op in _LINEAR or (e.op in ("mul", "div") and any(consts)
                                         and not (e.op == "div" and consts[0]))
            if not linear or any(k.kind != SUM and not c for k, c in
                                 zip(kinds, consts, strict=True)):
                raise _Unsplittable
            return [Kind(SUM)]
        return [_row_out(e, kinds)]
    match e.op:
        case "matmul" | "matmul_nt":
            a, w = kinds
            if a.kind != ROW or w.kind != FREE or a.axis == len(e.inputs[0].shape) - 1:
                raise _Unsplittable
            return [_row_out(e, kinds)]
        case "matmul_tn" | "conv1d_dw":
            a, g = kinds
            if a.kind != ROW or g.kind != ROW or (e.op == "matmul_tn" and a.axis != g.axis):
                raise _Unsplittable
            return [Kind(SUM)]
        case "slice" | "pad" | "concat":
            if len(ks) != 1:
                raise _Unsplittable
            if ks == {SUM}:
                return [Kind(SUM)]
            if any(k.kind == ROW and k.axis == len(x.shape) - 1
                   for k, x in zip(kinds, e.inputs, strict=True)):
                raise _Unsplittable  # the batch axis is the one being cut
            return [_row_out(e, kinds)]
        case "sum_to":
            (k,) = kinds
            if k.kind == SUM:
                return [Kind(SUM)]
            assert out is not None
            return [Kind(SUM)] if batch_axis(out.shape) is None else [_row_out(e, kinds)]
        case op if op in _PER_ROW:
            if SUM in ks:
                raise _Unsplittable
            assert out is not None
            ax = batch_axis(out.shape)
            if ax is None:
                raise _Unsplittable
            return [Kind(ROW, ax)]
    raise _Unsplittable


def _scan(e: Eqn, kinds: list[Kind], env: dict[str, Kind]) -> list[Kind]:
    spec: ScanSpec = e.attr("scan")
    n_arr = len(spec.arrays)
    arrays = [_of_shape(v.shape) for v in e.outputs[:n_arr]]
    for arr, k in zip(spec.arrays, arrays, strict=True):
        if arr.init is not None and kinds[arr.init] != k:
            raise _Unsplittable
    body = dict(env)
    for v, b in zip(spec.body.inputs, spec.in_bind, strict=True):
        if isinstance(b, ConstRef):
            src = kinds[b.index]
        else:
            src = _step(kinds[b.source[1]] if b.source[0] == "in" else arrays[b.source[1]])
            if b.fallback is not None and kinds[b.fallback] != src:
                raise _Unsplittable
        if src.kind == SUM:
            raise _Unsplittable
        if src.kind == ROW and batch_axis(v.shape) != src.axis:
            raise _Unsplittable
        body[v.name] = src
    for x in spec.body.eqns:
        for v, k in zip(x.outputs, _eqn(x, [_kind(body, i) for i in x.inputs], body),
                        strict=True):
            body[v.name] = k
    sums: list[Kind] = [Kind(FREE)] * spec.n_sums
    spills: list[Kind] = [Kind(FREE)] * spec.n_spills
    for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
        k = body[v.name]
        if isinstance(ob, SumTo):
            sums[ob.index] = _join(sums[ob.index], k)
            continue
        assert isinstance(ob, Store)
        want = _step(arrays[ob.array])
        if k != want and not (k.kind == FREE and want.kind == ROW):
            raise _Unsplittable  # a sum (or misaligned row) stored into a time-indexed array
        if ob.spill is not None:
            spills[ob.spill] = _join(spills[ob.spill], k)
    return arrays + sums + spills  # sums and spills are never read back by the body


def _step(k: Kind) -> Kind:
    """A time-indexed array's kind at one step (the time axis 0 removed)."""
    if k.kind == ROW:
        if k.axis == 0:
            raise _Unsplittable
        return Kind(ROW, k.axis - 1)
    return k


def _join(a: Kind, b: Kind) -> Kind:
    """The kind of a sum over time of values of kind ``b`` (``a``: what was there before)."""
    if a.kind == FREE:
        return b
    if b.kind == FREE or a == b:
        return a
    raise _Unsplittable


def _kind(env: Mapping[str, Kind], x: Operand) -> Kind:
    return Kind(FREE) if isinstance(x, Const) else env[x.name]


def row_plan(prog: Program) -> RowPlan | None:
    """The split plan of ``prog``, or None when some value mixes batch rows in a way that
    partial results cannot be joined (or the analysis cannot prove otherwise)."""
    try:
        env: dict[str, Kind] = {p.name: Kind(FREE) for p in prog.param_vars}
        for p in prog.param_vars:
            if batch_axis(p.shape) is not None:
                raise _Unsplittable
        axes: list[int | None] = []
        for v in prog.input_vars:
            k = _of_shape(v.shape)
            env[v.name] = k
            axes.append(k.axis if k.kind == ROW else None)
        for e in prog.eqns:
            for v, k in zip(e.outputs, _eqn(e, [_kind(env, x) for x in e.inputs], env),
                            strict=True):
                env[v.name] = k
        outs = []
        kinds = tuple(env[v.name] for v in prog.outputs)
        for k in kinds:
            outs.append(("concat", k.axis) if k.kind == ROW else (k.kind,) if k.kind == SUM
                        else ("first",))
        return RowPlan(tuple(axes), tuple(outs), kinds)
    except _Unsplittable:
        return None


def _matmul_flops(e: Eqn, size: Callable[[Dim], int]) -> float:
    """Multiply-adds x 2 of one matmul equation (0 for any other op), sizes from ``size``."""
    if e.op not in ("matmul", "matmul_nt", "matmul_tn"):
        return 0.0
    a = e.inputs[0]
    k = a.shape[0] if e.op == "matmul_tn" else a.shape[-1]
    out = 1
    for d in e.outputs[0].shape:
        out *= size(d)
    return 2.0 * out * size(k)


def row_flops(prog: Program, dims: Mapping[str, int]) -> float:
    """Multiply-adds x 2 of the products one batch row costs (scan bodies once per step): a
    cheap estimate of whether a call is worth cutting into slices."""

    def size(d: Dim) -> int:
        return 1 if d == BATCH else d.evaluate(dims)

    def walk(eqns: tuple[Eqn, ...], times: int) -> float:
        total = 0.0
        for e in eqns:
            total += times * _matmul_flops(e, size)
            spec = e.attr("scan")
            if spec is not None:
                total += walk(spec.body.eqns, times * spec.time.evaluate(dims))
        return total

    return walk(prog.eqns, 1)


def step_gemm_flops(prog: Program, dims: Mapping[str, int]) -> float:
    """Multiply-adds x 2 of the largest product one time step makes for the whole batch: the
    per-step GEMM that decides whether BLAS threads pay (see `rnnlang.parallel`)."""

    def size(d: Dim) -> int:
        return dims.get("B", 1) if d == BATCH else d.evaluate(dims)

    return max((_matmul_flops(x, size) for e in prog.eqns if e.attr("scan") is not None
                for x in e.attr("scan").body.eqns), default=0.0)
