"""`verify(program)`: SSA form, definitions before uses, shapes, and scan wiring.

Run after every pass in tests and with ``--verify``; a failure is a compiler bug, never the
user's mistake, so it raises `InternalCompilerError`.
"""

from __future__ import annotations

from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import ConstRef, Eqn, Program, Region, ScanSpec, Store, SumTo, Tap, Var
from rnnlang.ir.ops import OPS, ShapeError
from rnnlang.ir.types import TensorType


def _fail(msg: str) -> None:
    raise InternalCompilerError(f"IR verification failed: {msg}")


def _check_eqns(eqns: tuple[Eqn, ...], defined: dict[str, Var], where: str) -> None:
    for e in eqns:
        if e.op not in OPS:
            _fail(f"{where}: unknown op {e.op}")
        arity = OPS[e.op].arity
        if arity is not None and len(e.inputs) != arity:
            _fail(f"{where}: {e.op} takes {arity} operand(s), got {len(e.inputs)}")
        for x in e.inputs:
            if isinstance(x, Var):
                if x.name not in defined:
                    _fail(f"{where}: {x.name} used by {e.op} before it is defined")
                if defined[x.name].type != x.type:
                    _fail(f"{where}: {x.name} used with type {x.type}, defined {defined[x.name].type}")
        if e.op == "scan":
            _check_scan(e, defined)
        else:
            try:
                shape = OPS[e.op].shape(tuple(x.shape for x in e.inputs), dict(e.attrs))
            except ShapeError as exc:
                _fail(f"{where}: {e.op}: {exc}")
            if len(e.outputs) != 1 or e.outputs[0].shape != shape:
                _fail(f"{where}: {e.op} produces {TensorType(shape)}, declared "
                      f"{e.outputs[0].type}")
        for v in e.outputs:
            if v.name in defined:
                _fail(f"{where}: {v.name} defined twice")
            defined[v.name] = v


def _check_scan(e: Eqn, outer: dict[str, Var]) -> None:
    spec = e.attr("scan")
    if not isinstance(spec, ScanSpec):
        _fail("scan without spec")
        return
    body: Region = spec.body
    n_out = len(spec.arrays) + spec.n_sums + spec.n_spills
    if len(e.outputs) != n_out:
        _fail(f"scan declares {n_out} outputs, eqn has {len(e.outputs)}")
    if len(body.inputs) != len(spec.in_bind) or len(body.outputs) != len(spec.out_bind):
        _fail("scan bindings do not match body signature")
    if not 0 <= spec.n_seq <= len(e.inputs):
        _fail(f"scan declares {spec.n_seq} sequences but has {len(e.inputs)} inputs")
    for k, arr in enumerate(spec.arrays):
        if arr.init is not None and not (0 <= arr.init < len(e.inputs) and
                                         e.inputs[arr.init].shape == e.outputs[k].shape):
            _fail(f"scan array {arr.name}: bad initial value index {arr.init}")
    inner: dict[str, Var] = {}
    for v, b in zip(body.inputs, spec.in_bind, strict=True):
        if isinstance(b, Tap):
            kind, i = b.source
            limit = spec.n_seq if kind == "in" else len(spec.arrays)
            if kind not in ("in", "out") or not 0 <= i < limit:
                _fail(f"tap {v.name} reads {kind} {i}, which does not exist" + (
                      " (it reads a non-sequence input)" if kind == "in" and i < len(e.inputs) else ""))
            if b.fallback is not None and not (
                    spec.n_seq <= b.fallback < len(e.inputs) and
                    e.inputs[b.fallback].shape == v.shape):
                _fail(f"tap {v.name}: bad fallback index {b.fallback}")
        if isinstance(b, ConstRef):
            if not spec.n_seq <= b.index < len(e.inputs):
                _fail(f"scan const {v.name}: index {b.index} out of range")
            src = e.inputs[b.index]
            if not isinstance(src, Var) or src.shape != v.shape:
                _fail(f"scan const {v.name} bound to a value of another shape")
        elif isinstance(b, Tap):
            kind, i = b.source
            arr = e.inputs[i] if kind == "in" else e.outputs[i]
            if kind == "in" and i >= spec.n_seq:
                _fail(f"tap {v.name} reads a non-sequence input")
            if arr.shape[1:] != v.shape or arr.shape[0] != spec.time:
                _fail(f"tap {v.name}: {arr.type} cannot give {v.type}")
        inner[v.name] = v
    _check_eqns(body.eqns, inner, f"scan body of {e.outputs[0].name}")
    for v, ob in zip(body.outputs, spec.out_bind, strict=True):
        if v.name not in inner:
            _fail(f"body output {v.name} is not defined")
        if isinstance(ob, Store) and not (0 <= ob.array < len(spec.arrays)) or (
                isinstance(ob, Store) and ob.spill is not None and
                not 0 <= ob.spill < spec.n_spills) or (
                isinstance(ob, SumTo) and not 0 <= ob.index < spec.n_sums):
            _fail(f"body output {v.name} is bound to an output that does not exist")
        if isinstance(ob, Store):
            if e.outputs[ob.array].shape[1:] != v.shape:
                _fail(f"store of {v.name} into {e.outputs[ob.array].name}: shape mismatch")
        elif isinstance(ob, SumTo):
            if e.outputs[len(spec.arrays) + ob.index].shape != v.shape:
                _fail(f"sum of {v.name}: shape mismatch")


def verify(prog: Program) -> None:
    defined: dict[str, Var] = {}
    for v in prog.input_vars + prog.param_vars:
        if v.name in defined:
            _fail(f"{v.name} declared twice")
        defined[v.name] = v
    _check_eqns(prog.eqns, defined, "program")
    for v in prog.outputs:
        if v.name not in defined:
            _fail(f"output {v.name} is not defined")
