"""A NumPy interpreter of the IR: the oracle for tests and a debugging aid (target="reference").

It follows the op table's NumPy semantics literally and runs scans as plain Python loops, so it
shares nothing with the code generator but the IR itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import Const, ConstRef, Eqn, Operand, Program, Region, ScanSpec, Store, Tap
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import Dim

Env = dict[str, np.ndarray]


def run_program(prog: Program, values: Mapping[str, np.ndarray], dims: Mapping[str, int],
                dtype: np.dtype) -> list[np.ndarray]:
    """Evaluate `prog`; `values` maps input and parameter var names to arrays."""
    env: Env = {k: np.asarray(v, dtype=dtype) for k, v in values.items()}
    run_eqns(prog.eqns, env, dims, np.dtype(dtype))
    return [env[v.name] for v in prog.outputs]


def _get(env: Env, x: Operand, dtype: np.dtype) -> np.ndarray:
    if isinstance(x, Const):
        return np.asarray(x.value, dtype=dtype)
    try:
        return env[x.name]
    except KeyError:
        raise InternalCompilerError(f"interpreter: value {x.name} is not defined") from None


def _ev(d: Dim, dims: Mapping[str, int]) -> int:
    return d.evaluate(dims)


def run_eqns(eqns: tuple[Eqn, ...], env: Env, dims: Mapping[str, int], dtype: np.dtype) -> None:
    for e in eqns:
        args = [_get(env, x, dtype) for x in e.inputs]
        if e.op == "scan":
            shapes = [tuple(_ev(d, dims) for d in v.shape) for v in e.outputs]
            outs = _run_scan(e.attr("scan"), args, dims, dtype, shapes)
        else:
            outs = [_apply(e, args, dims, dtype)]
        for v, val in zip(e.outputs, outs, strict=True):
            env[v.name] = np.asarray(val, dtype=dtype)


def _apply(e: Eqn, args: list[np.ndarray], dims: Mapping[str, int], dtype: np.dtype) -> np.ndarray:
    op = OPS[e.op]
    a = dict(e.attrs)
    match e.op:
        case "slice":
            return args[0][..., _ev(a["start"], dims) : _ev(a["stop"], dims)]
        case "pad":
            return op.numpy(args[0], _ev(a["start"], dims), _ev(a["total"], dims))
        case "sum_to":
            return op.numpy(args[0], tuple(_ev(d, dims) for d in a["shape"]))
        case "zeros":
            return np.zeros(tuple(_ev(d, dims) for d in a["shape"]), dtype)
        case "repeat":
            return op.numpy(args[0], _ev(a["time"], dims))
        case "shift":
            return op.numpy(*args, by=a["by"])
        case "last_vjp":
            return op.numpy(args[0], args[1], 0)
        case "conv1d":
            return op.numpy(*args, a["stride"], a["padding"], _ev(a["time"], dims))
        case "conv1d_dx":
            return op.numpy(*args, a["stride"], a["padding"], _ev(a["time"], dims))
        case "conv1d_dw":
            return op.numpy(*args, a["kernel"], a["stride"], a["padding"])
    return op.numpy(*args)


def _run_scan(spec: ScanSpec, args: list[np.ndarray], dims: Mapping[str, int],
              dtype: np.dtype, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    T = _ev(spec.time, dims)
    seqs = args[: spec.n_seq]
    arrays = []
    for k, arr in enumerate(spec.arrays):
        arrays.append(args[arr.init].copy() if arr.init is not None else np.zeros(shapes[k], dtype))
    sums: list[np.ndarray | None] = [None] * spec.n_sums
    spills: list[np.ndarray | None] = [None] * spec.n_spills
    steps = range(T - 1, -1, -1) if spec.reverse else range(T)
    for t in steps:
        env: Env = {}
        for v, b in zip(spec.body.inputs, spec.in_bind, strict=True):
            env[v.name] = _read(b, t, T, seqs, arrays, args, v, dims, dtype)
        run_eqns(spec.body.eqns, env, dims, dtype)
        for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
            val = env[v.name]
            if isinstance(ob, Store):
                i = t + ob.offset
                if 0 <= i < T:
                    if ob.accumulate:
                        arrays[ob.array][i] += val
                    else:
                        arrays[ob.array][i] = val
                elif ob.spill is not None:
                    cur = spills[ob.spill]
                    spills[ob.spill] = val.copy() if cur is None else cur + val
            else:
                cur = sums[ob.index]
                sums[ob.index] = val.copy() if cur is None else cur + val
    return arrays + [_or_zero(s, v, spec, dims, dtype, "sum", i) for i, s in enumerate(sums)] + [
        _or_zero(s, v, spec, dims, dtype, "spill", i) for i, s in enumerate(spills)]


def _or_zero(x: np.ndarray | None, _v: object, spec: ScanSpec, dims: Mapping[str, int],
             dtype: np.dtype, kind: str, idx: int) -> np.ndarray:
    if x is not None:
        return x
    for v, b in zip(spec.body.outputs, spec.out_bind, strict=True):
        if (kind == "sum" and not isinstance(b, Store) and b.index == idx) or (
                kind == "spill" and isinstance(b, Store) and b.spill == idx):
            return np.zeros(tuple(_ev(d, dims) for d in v.shape), dtype)
    raise InternalCompilerError(f"scan {kind} output {idx} has no producer")


def _read(b: Tap | ConstRef, t: int, T: int, seqs: list[np.ndarray], arrays: list[np.ndarray],
          args: list[np.ndarray], v: object, dims: Mapping[str, int], dtype: np.dtype) -> np.ndarray:
    if isinstance(b, ConstRef):
        return args[b.index]
    src = seqs[b.source[1]] if b.source[0] == "in" else arrays[b.source[1]]
    i = t + b.offset
    if 0 <= i < T:
        return src[i].copy()
    if b.fallback is not None:
        return args[b.fallback]
    return np.zeros(src.shape[1:], dtype)


def run_region(region: Region, env: Env, dims: Mapping[str, int], dtype: np.dtype) -> None:
    run_eqns(region.eqns, env, dims, dtype)
