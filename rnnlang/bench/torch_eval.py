"""An evaluator of rnnlang IR in eager PyTorch: the "torch loop" baseline of ``rnnc bench``.

It mirrors `rnnlang.interp` op for op (scans run as Python loops over time, one torch call per
equation per step) with every row of the op table mapped to torch functions, so gradients come
from torch.autograd instead of rnnlang's derived BPTT. Running a model's optimized forward
program gives the loop a careful PyTorch user would write for that spec: input projections
hoisted into one matmul before the loop, gate matmuls fused, no per-step weight slicing.

Imports torch: import this module only when torch is installed (`rnnlang.bench.have_torch`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import Tensor

from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import Const, ConstRef, Eqn, Operand, Program, ScanSpec, Store, Tap, walk
from rnnlang.ir.types import Dim

Env = dict[str, Tensor]
Dims = Mapping[str, int]
# (eqn, args, dims, dtype) -> value, for ops whose torch form needs the eqn's attributes
Rule = Callable[[Eqn, list[Tensor], Dims, torch.dtype], Tensor]


def _sqrt2pi() -> float:
    return math.sqrt(2.0 * math.pi)


def _d_gelu(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / _sqrt2pi()


# Pointwise rows of rnnlang.ir.ops (same names, same semantics as their NumPy column).
UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "neg": torch.neg,
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softsign": tnf.softsign,
    "hard_sigmoid": tnf.hardsigmoid,
    "exp": torch.exp,
    "log": torch.log,
    "softplus": tnf.softplus,
    "abs": torch.abs,
    "elu": tnf.elu,
    "gelu": tnf.gelu,
    "sqrt": torch.sqrt,
    "square": torch.square,
    "d_relu": lambda x: (x > 0).to(x.dtype),
    "d_softsign": lambda x: 1.0 / (1.0 + torch.abs(x)) ** 2,
    "d_hard_sigmoid": lambda x: ((x > -3) & (x < 3)).to(x.dtype) / 6.0,
    "d_abs": torch.sign,
    "d_elu": lambda x: torch.where(x > 0, torch.ones_like(x), torch.exp(torch.clamp(x, max=0))),
    "d_gelu": _d_gelu,
}

BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "d_tanh": lambda g, y: g * (1 - y * y),
    "d_sigmoid": lambda g, y: g * y * (1 - y),
}


def _ev(d: Dim, dims: Dims) -> int:
    return d.evaluate(dims)


def _lengths(mask: Tensor) -> Tensor:
    return mask[:, :, 0].sum(dim=0).round().long()


def _last_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    n = _lengths(mask)
    return torch.clamp(n - 1, min=0), torch.arange(n.shape[0])


def t_sum_to(a: Tensor, shape: Sequence[int]) -> Tensor:
    """Undo broadcasting: the torch form of `rnnlang.ir.ops.np_sum_to`."""
    while a.dim() > len(shape):
        a = a.sum(dim=0)
    for i, n in enumerate(shape):
        if n == 1 and a.shape[i] != 1:
            a = a.sum(dim=i, keepdim=True)
    return a


def t_reverse(seq: Tensor, mask: Tensor) -> Tensor:
    """Reverse each sequence within its own length; padded steps become zero."""
    T = seq.shape[0]
    n = _lengths(mask)[None, :]
    t = torch.arange(T)[:, None]
    inside = t < n
    idx = torch.where(inside, n - 1 - t, t)
    out = seq[idx, torch.arange(seq.shape[1])[None, :]]
    return out * inside[..., None].to(seq.dtype)


def t_shift(seq: Tensor, rest: list[Tensor], by: int) -> Tensor:
    n = seq.shape[0]
    k = min(by, n)
    head = (rest[0].expand((k,) + seq.shape[1:]) if rest
            else torch.zeros((k,) + seq.shape[1:], dtype=seq.dtype))
    return torch.cat([head, seq[: n - k]], dim=0)


def t_conv1d(x: Tensor, w: Tensor, b: Tensor, stride: int, padding: int, t_out: int) -> Tensor:
    xp = tnf.pad(x, (0, 0, 0, 0, padding, padding))
    out = b.expand(t_out, x.shape[1], w.shape[2])
    for j in range(w.shape[0]):
        out = out + xp[j : j + stride * (t_out - 1) + 1 : stride] @ w[j]
    return out


def t_conv1d_dx(g: Tensor, w: Tensor, stride: int, padding: int, t_in: int) -> Tensor:
    dxp = torch.zeros((t_in + 2 * padding, g.shape[1], w.shape[1]), dtype=g.dtype)
    steps = torch.arange(g.shape[0]) * stride
    for j in range(w.shape[0]):
        dxp = dxp.index_add(0, steps + j, g @ w[j].T)
    return dxp[padding : padding + t_in]


def t_conv1d_dw(x: Tensor, g: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    xp = tnf.pad(x, (0, 0, 0, 0, padding, padding))
    span = stride * (g.shape[0] - 1) + 1
    return torch.stack([torch.einsum("tbi,tbo->io", xp[j : j + span : stride], g)
                        for j in range(kernel)])


def _last(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    idx, b = _last_index(a[1])
    return a[0][idx, b]


def _last_vjp(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    g, mask = a
    idx, b = _last_index(mask)
    out = torch.zeros((mask.shape[0],) + tuple(g.shape), dtype=g.dtype)
    return out.index_put((idx, b), g)


def _mean(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    seq, mask = a
    return (seq * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1)


def _mean_vjp(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    g, mask = a
    return mask * (g / torch.clamp(mask.sum(dim=0), min=1))[None]


def _slice(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    return a[0][..., _ev(e.attr("start"), d) : _ev(e.attr("stop"), d)]


def _pad(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    start, total = _ev(e.attr("start"), d), _ev(e.attr("total"), d)
    return tnf.pad(a[0], (start, total - start - a[0].shape[-1]))


def _shape(e: Eqn, d: Dims) -> tuple[int, ...]:
    return tuple(_ev(x, d) for x in e.attr("shape"))


def _matmul_tn(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    x, g = a
    return x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


def _select(e: Eqn, a: list[Tensor], d: Dims, dt: torch.dtype) -> Tensor:
    m, x, y = a
    return torch.where(m > 0.5, x, y)


def _attrs(e: Eqn, d: Dims, *keys: str) -> list[int]:
    return [_ev(v, d) if isinstance(v, Dim) else int(v) for v in (e.attr(k) for k in keys)]


# Structural rows of the op table; "scan" is handled by run_eqns itself.
RULES: dict[str, Rule] = {
    "select": _select,
    "matmul": lambda e, a, d, dt: a[0] @ a[1],
    "matmul_nt": lambda e, a, d, dt: a[0] @ a[1].T,
    "matmul_tn": _matmul_tn,
    "slice": _slice,
    "concat": lambda e, a, d, dt: torch.cat(a, dim=-1),
    "pad": _pad,
    "sum_to": lambda e, a, d, dt: t_sum_to(a[0], _shape(e, d)),
    "zeros": lambda e, a, d, dt: torch.zeros(_shape(e, d), dtype=dt),
    "last": _last,
    "last_vjp": _last_vjp,
    "mean": _mean,
    "mean_vjp": _mean_vjp,
    "reverse": lambda e, a, d, dt: t_reverse(a[0], a[1]),
    "repeat": lambda e, a, d, dt: a[0][None].expand((_ev(e.attr("time"), d),) + a[0].shape),
    "shift": lambda e, a, d, dt: t_shift(a[0], a[1:], int(e.attr("by"))),
    "sum_time": lambda e, a, d, dt: a[0].sum(dim=0),
    "conv1d": lambda e, a, d, dt: t_conv1d(*a, *_attrs(e, d, "stride", "padding", "time")),
    "conv1d_dx": lambda e, a, d, dt: t_conv1d_dx(*a, *_attrs(e, d, "stride", "padding", "time")),
    "conv1d_dw": lambda e, a, d, dt: t_conv1d_dw(*a, *_attrs(e, d, "kernel", "stride",
                                                             "padding")),
}

SUPPORTED = frozenset(UNARY) | frozenset(BINARY) | frozenset(RULES) | {"scan"}


def unsupported_ops(prog: Program) -> list[str]:
    """Ops of ``prog`` (scan bodies included) this evaluator has no torch form for, sorted."""
    return sorted({e.op for e in walk(prog.eqns)} - SUPPORTED)


def run_program(prog: Program, values: Mapping[str, Tensor], dims: Dims,
                dtype: torch.dtype) -> list[Tensor]:
    """Evaluate ``prog`` on torch tensors (``values``: inputs and parameters by var name)."""
    missing = unsupported_ops(prog)
    if missing:
        raise NotImplementedError(f"no torch form for op {', '.join(missing)}")
    env: Env = dict(values)
    run_eqns(prog.eqns, env, dims, dtype)
    return [env[v.name] for v in prog.outputs]


def _get(env: Env, x: Operand, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Const):
        return torch.tensor(x.value, dtype=dtype)
    try:
        return env[x.name]
    except KeyError:
        raise InternalCompilerError(f"torch evaluator: value {x.name} is not defined") from None


def run_eqns(eqns: tuple[Eqn, ...], env: Env, dims: Dims, dtype: torch.dtype) -> None:
    for e in eqns:
        args = [_get(env, x, dtype) for x in e.inputs]
        if e.op == "scan":
            shapes = [tuple(_ev(d, dims) for d in v.shape) for v in e.outputs]
            outs = _scan(e.attr("scan"), args, dims, dtype, shapes)
        else:
            outs = [apply(e, args, dims, dtype)]
        for v, val in zip(e.outputs, outs, strict=True):
            env[v.name] = val


def apply(e: Eqn, args: list[Tensor], dims: Dims, dtype: torch.dtype) -> Tensor:
    """One non-scan equation."""
    if e.op in UNARY:
        return UNARY[e.op](args[0])
    if e.op in BINARY:
        return BINARY[e.op](args[0], args[1])
    return RULES[e.op](e, args, dims, dtype)


Slots = list[Tensor | None]  # one written array as per-step values (None: still zero)


def _scan(spec: ScanSpec, args: list[Tensor], dims: Dims, dtype: torch.dtype,
          shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """The time loop with per-step lists instead of in-place writes, so autograd can follow."""
    T = _ev(spec.time, dims)
    arrays: list[Slots] = [list(args[a.init].unbind(0)) if a.init is not None else [None] * T
                           for a in spec.arrays]
    sums: Slots = [None] * spec.n_sums
    spills: Slots = [None] * spec.n_spills
    for t in range(T - 1, -1, -1) if spec.reverse else range(T):
        env: Env = {v.name: _read(b, t, T, args, arrays, shapes, spec, dtype)
                    for v, b in zip(spec.body.inputs, spec.in_bind, strict=True)}
        run_eqns(spec.body.eqns, env, dims, dtype)
        for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
            val = env[v.name]
            if not isinstance(ob, Store):
                sums[ob.index] = _acc(sums[ob.index], val)
                continue
            i = t + ob.offset
            if 0 <= i < T:
                slot = shapes[ob.array][1:]
                val = val.expand(slot)
                arrays[ob.array][i] = _acc(arrays[ob.array][i], val) if ob.accumulate else val
            elif ob.spill is not None:
                spills[ob.spill] = _acc(spills[ob.spill], val)
    n = len(spec.arrays)
    out = [torch.stack([s if s is not None else torch.zeros(shapes[k][1:], dtype=dtype)
                        for s in arr]) for k, arr in enumerate(arrays)]
    out += [s if s is not None else torch.zeros(shapes[n + i], dtype=dtype)
            for i, s in enumerate(sums)]
    out += [s if s is not None else torch.zeros(shapes[n + spec.n_sums + i], dtype=dtype)
            for i, s in enumerate(spills)]
    return out


def _acc(cur: Tensor | None, val: Tensor) -> Tensor:
    return val if cur is None else cur + val


def _read(b: Tap | ConstRef, t: int, T: int, args: list[Tensor], arrays: list[Slots],
          shapes: list[tuple[int, ...]], spec: ScanSpec, dtype: torch.dtype) -> Tensor:
    if isinstance(b, ConstRef):
        return args[b.index]
    kind, k = b.source
    i = t + b.offset
    if kind == "in":
        seq = args[k]
        if 0 <= i < T:
            return seq[i]
        row = tuple(seq.shape[1:])
    else:
        if 0 <= i < T:
            val = arrays[k][i]
            return val if val is not None else torch.zeros(shapes[k][1:], dtype=dtype)
        row = shapes[k][1:]
    if b.fallback is not None:
        return args[b.fallback]
    return torch.zeros(row, dtype=dtype)


def to_torch(values: Mapping[str, np.ndarray], dtype: torch.dtype,
             grad: frozenset[str] = frozenset()) -> dict[str, Tensor]:
    """Copies of NumPy arrays as tensors; names in ``grad`` become autograd leaves."""
    out: dict[str, Tensor] = {}
    for k, v in values.items():
        t = torch.from_numpy(np.array(v, copy=True)).to(dtype)
        out[k] = t.requires_grad_(True) if k in grad else t
    return out


def torch_dtype(np_dtype: Any) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(np_dtype).name]


__all__ = ["SUPPORTED", "apply", "run_program", "to_torch", "torch_dtype", "unsupported_ops"]
