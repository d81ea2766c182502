"""The op table: one row per primitive with its arity, shape rule and NumPy semantics.

Pointwise rows also carry a scalar template used by the code generator (``{0}``, ``{1}`` are
operands; ``_name`` helpers come from the generated module's prelude). VJP rules live in
``autodiff/vjp.py`` keyed by the same names. Adding an op means one row here, one VJP rule, and
tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnlang.ir.types import ONE, Dim, broadcast

Shape = tuple[Dim, ...]


class ShapeError(Exception):
    """Operand shapes an op cannot take; lowering turns it into a located user error."""


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    arity: int | None  # None: variadic
    shape: Callable[[tuple[Shape, ...], dict[str, Any]], Shape]
    numpy: Callable[..., np.ndarray]
    scalar: str | None = None  # pointwise template; None for non-pointwise ops
    doc: str = ""

    @property
    def pointwise(self) -> bool:
        return self.scalar is not None


def _bcast(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    out: Shape = ()
    for s in shapes:
        r = broadcast(out, s)
        if r is None:
            raise ShapeError("shapes " + " and ".join(_fmt(x) for x in shapes) + " do not match")
        out = r
    return out


def _fmt(s: Shape) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.asarray(x).dtype])(x)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _d_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _elu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _hsig(x: np.ndarray) -> np.ndarray:
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)


# name -> (numpy function, scalar template) for one-argument pointwise ops
_UNARY: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, str]] = {
    "neg": (np.negative, "-{0}", "negation"),
    "identity": (lambda x: x, "{0}", "identity (linear) activation"),
    "tanh": (np.tanh, "math.tanh({0})", "hyperbolic tangent"),
    "sigmoid": (_sigmoid, "_sigmoid({0})", "logistic sigmoid 1/(1+exp(-x))"),
    "relu": (lambda x: np.maximum(x, 0), "max({0}, _ZERO)", "max(x, 0)"),
    "softsign": (lambda x: x / (1 + np.abs(x)), "{0} / (_ONE + abs({0}))", "x/(1+|x|)"),
    "hard_sigmoid": (_hsig, "_hard_sigmoid({0})", "PyTorch's hardsigmoid: clip(x/6+1/2, 0, 1)"),
    "exp": (np.exp, "math.exp({0})", "exponential"),
    "log": (np.log, "math.log({0})", "natural logarithm"),
    "softplus": (_softplus, "_softplus({0})", "log(1+exp(x)), computed stably"),
    "abs": (np.abs, "abs({0})", "absolute value"),
    "elu": (_elu, "_elu({0})", "x if x>0 else exp(x)-1"),
    "gelu": (_gelu, "_gelu({0})", "exact GELU x*Phi(x)"),
    "sqrt": (np.sqrt, "math.sqrt({0})", "square root"),
    "square": (np.square, "{0} * {0}", "x*x"),
    # derivative helpers used by the VJP rules (not written by users)
    "d_relu": (lambda x: (x > 0).astype(x.dtype), "(_ONE if {0} > _ZERO else _ZERO)", "relu'(x)"),
    "d_softsign": (lambda x: 1.0 / (1 + np.abs(x)) ** 2, "_d_softsign({0})", "softsign'(x)"),
    "d_hard_sigmoid": (lambda x: ((x > -3) & (x < 3)).astype(x.dtype) / 6.0,
                       "(_SIXTH if -_THREE < {0} < _THREE else _ZERO)", "hard_sigmoid'(x)"),
    "d_abs": (np.sign, "_sign({0})", "sign(x)"),
    "d_elu": (lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0))).astype(x.dtype),
              "(_ONE if {0} > _ZERO else math.exp({0}))", "elu'(x)"),
    "d_gelu": (_d_gelu, "_d_gelu({0})", "gelu'(x)"),
}

_BINARY: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str, str]] = {
    "add": (np.add, "{0} + {1}", "a + b"),
    "sub": (np.subtract, "{0} - {1}", "a - b"),
    "mul": (np.multiply, "{0} * {1}", "a * b"),
    "div": (np.divide, "{0} / {1}", "a / b"),
    # derivative helpers: f'(x) written in terms of the output y
    "d_tanh": (lambda g, y: g * (1 - y * y), "{0} * (_ONE - {1} * {1})", "g * (1 - y^2)"),
    "d_sigmoid": (lambda g, y: g * y * (1 - y), "{0} * {1} * (_ONE - {1})", "g * y * (1 - y)"),
}

USER_FUNCTIONS = ("identity", "tanh", "sigmoid", "relu", "softsign", "hard_sigmoid", "exp", "log",
                  "softplus", "abs", "elu", "gelu", "sqrt", "square")


def _matmul_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    a, w = shapes
    if len(w) != 2 or len(a) < 1:
        raise ShapeError(f"cannot multiply {_fmt(a)} by {_fmt(w)}: the right side must be a matrix")
    if a[-1] != w[0]:
        raise ShapeError(f"cannot multiply {_fmt(a)} by {_fmt(w)}: {a[-1]} != {w[0]}")
    return a[:-1] + (w[1],)


def _matmul_nt_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    g, w = shapes
    if g[-1] != w[1]:
        raise ShapeError(f"matmul_nt: {_fmt(g)} by {_fmt(w)}^T")
    return g[:-1] + (w[0],)


def _matmul_tn_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    a, g = shapes
    if a[:-1] != g[:-1]:
        raise ShapeError(f"matmul_tn: {_fmt(a)}^T by {_fmt(g)}")
    return (a[-1], g[-1])


def _nonneg(d: Dim) -> bool | None:
    """Whether a size expression is >= 0 for all sizes >= 1 (None when it depends)."""
    if d.const >= 0 and all(k >= 0 for _, k in d.terms):
        return True
    if all(k <= 0 for _, k in d.terms) and d.const + sum(k for _, k in d.terms) < 0:
        return False
    return None


def _slice_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    (a,) = shapes
    start, stop = attrs["start"], attrs["stop"]
    if _nonneg(start) is False or _nonneg(a[-1] - stop) is False or _nonneg(
            stop - start - Dim.of(1)) is False:
        raise ShapeError(f"slice [{start}:{stop}] is out of range for {_fmt(a)}")
    return a[:-1] + (stop - start,)


def _concat_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    lead = shapes[0][:-1]
    total = Dim()
    for s in shapes:
        if s[:-1] != lead:
            raise ShapeError("cannot concatenate " + ", ".join(_fmt(x) for x in shapes))
        total = total + s[-1]
    return lead + (total,)


def _pad_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    return shapes[0][:-1] + (attrs["total"],)


def _attr_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    return tuple(attrs["shape"])


def _seq_reduce_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    return shapes[0][1:]


def _seq_like_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    return shapes[0]


def _repeat_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    return (attrs["time"],) + shapes[0]


def _conv_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    x, w, _ = shapes
    if x[-1] != w[1]:
        raise ShapeError(f"conv1d input has {x[-1]} channels but the kernel expects {w[1]}")
    return (attrs["time"], x[1], w[2])


def _conv_dx_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    g, w = shapes
    return (attrs["time"], g[1], w[1])


def _conv_dw_shape(shapes: tuple[Shape, ...], attrs: dict[str, Any]) -> Shape:
    x, g = shapes
    return (Dim.of(attrs["kernel"]), x[-1], g[-1])


# ---- NumPy semantics of the structural ops (the interpreter's oracle) ----------------------
def np_sum_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    while a.ndim > len(shape):
        a = a.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1 and a.shape[i] != 1:
            a = a.sum(axis=i, keepdims=True)
    return a


def np_last(seq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lengths = mask[:, :, 0].sum(axis=0).astype(int)
    return seq[np.maximum(lengths - 1, 0), np.arange(seq.shape[1])]


def np_last_vjp(g: np.ndarray, mask: np.ndarray, like_t: int) -> np.ndarray:
    out = np.zeros((mask.shape[0],) + g.shape, g.dtype)
    lengths = mask[:, :, 0].sum(axis=0).astype(int)
    out[np.maximum(lengths - 1, 0), np.arange(g.shape[0])] = g
    return out


def np_mean(seq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (seq * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)


def np_mean_vjp(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return mask * (g / np.maximum(mask.sum(axis=0), 1))[None]


def np_reverse(seq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reverse each sequence within its own length; padding stays zero."""
    out = np.zeros_like(seq)
    lengths = mask[:, :, 0].sum(axis=0).astype(int)
    for b, n in enumerate(lengths):
        out[:n, b] = seq[:n, b][::-1]
    return out


def np_conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, padding: int,
              t_out: int) -> np.ndarray:
    k = w.shape[0]
    xp = np.pad(x, ((padding, padding), (0, 0), (0, 0)))
    out = np.zeros((t_out, x.shape[1], w.shape[2]), x.dtype) + b
    for t in range(t_out):
        for j in range(k):
            out[t] += xp[t * stride + j] @ w[j]
    return out


def np_conv1d_dx(g: np.ndarray, w: np.ndarray, stride: int, padding: int, t_in: int) -> np.ndarray:
    k = w.shape[0]
    dxp = np.zeros((t_in + 2 * padding, g.shape[1], w.shape[1]), g.dtype)
    for t in range(g.shape[0]):
        for j in range(k):
            dxp[t * stride + j] += g[t] @ w[j].T
    return dxp[padding : padding + t_in]


def np_conv1d_dw(x: np.ndarray, g: np.ndarray, kernel: int, stride: int,
                 padding: int) -> np.ndarray:
    xp = np.pad(x, ((padding, padding), (0, 0), (0, 0)))
    dw = np.zeros((kernel, x.shape[2], g.shape[2]), x.dtype)
    for t in range(g.shape[0]):
        for j in range(kernel):
            dw[j] += xp[t * stride + j].T @ g[t]
    return dw


def np_shift(seq: np.ndarray, *rest: np.ndarray, by: int = 1) -> np.ndarray:
    out = np.empty_like(seq)
    n = seq.shape[0]
    k = min(by, n)
    out[k:] = seq[: n - k]
    out[:k] = rest[0] if rest else 0.0
    return out


def _pad_np(a: np.ndarray, start: int, total: int) -> np.ndarray:
    out = np.zeros(a.shape[:-1] + (total,), a.dtype)
    out[..., start : start + a.shape[-1]] = a
    return out


def _tn(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])


def _select(m: np.ndarray, a: Any, b: Any) -> np.ndarray:
    return np.where(m > 0.5, a, b)


def _table() -> dict[str, OpDef]:
    rows: list[OpDef] = []
    for name, (fn, tmpl, doc) in _UNARY.items():
        rows.append(OpDef(name, 1, _bcast, fn, tmpl, doc))
    for name, (fn2, tmpl, doc) in _BINARY.items():
        rows.append(OpDef(name, 2, _bcast, fn2, tmpl, doc))
    rows += [
        OpDef("select", 3, _bcast, _select, "({1} if {0} > _HALF else {2})",
              "mask ? a : b; freezes states at padded steps"),
        OpDef("matmul", 2, _matmul_shape, lambda a, w: a @ w, None, "row vectors times a matrix"),
        OpDef("matmul_nt", 2, _matmul_nt_shape, lambda g, w: g @ w.T, None, "g @ W^T"),
        OpDef("matmul_tn", 2, _matmul_tn_shape, _tn, None, "A^T @ G over all leading axes"),
        OpDef("slice", 1, _slice_shape, lambda a, start, stop: a[..., start:stop], None,
              "features [start, stop) of the last axis"),
        OpDef("concat", None, _concat_shape, lambda *xs: np.concatenate(xs, axis=-1), None,
              "concatenate along the last axis"),
        OpDef("pad", 1, _pad_shape, _pad_np, None, "place into zeros of width total at start"),
        OpDef("sum_to", 1, _attr_shape, np_sum_to, None, "undo broadcasting by summing"),
        OpDef("zeros", 0, _attr_shape, lambda shape, dtype: np.zeros(shape, dtype), None, "zeros"),
        OpDef("last", 2, _seq_reduce_shape, np_last, None, "value at each sequence's last step"),
        OpDef("last_vjp", 2, lambda s, a: (a["time"],) + s[0], np_last_vjp, None, "scatter"),
        OpDef("mean", 2, _seq_reduce_shape, np_mean, None, "mean over each sequence's steps"),
        OpDef("mean_vjp", 2, lambda s, a: (s[1][0],) + s[0], np_mean_vjp, None, "spread"),
        OpDef("reverse", 2, _seq_like_shape, np_reverse, None, "reverse within lengths"),
        OpDef("repeat", 1, _repeat_shape, lambda v, t: np.repeat(v[None], t, 0), None,
              "a vector at every step"),
        OpDef("shift", None, _seq_like_shape, np_shift, None,
              "seq delayed by k steps, the fallback (or zeros) before the start"),
        OpDef("sum_time", 1, _seq_reduce_shape, lambda s: s.sum(axis=0), None, "sum over time"),
        OpDef("conv1d", 3, _conv_shape, np_conv1d, None, "convolution over time"),
        OpDef("conv1d_dx", 2, _conv_dx_shape, np_conv1d_dx, None, "conv1d input gradient"),
        OpDef("conv1d_dw", 2, _conv_dw_shape, np_conv1d_dw, None, "conv1d kernel gradient"),
        OpDef("scan", None, lambda s, a: (), lambda *a: None, None, "time loop"),
    ]
    return {r.name: r for r in rows}


OPS: dict[str, OpDef] = _table()

__all__ = ["OPS", "ONE", "OpDef", "ShapeError", "USER_FUNCTIONS"]
