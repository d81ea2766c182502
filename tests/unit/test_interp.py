"""The NumPy interpreter, one op at a time, against independent NumPy/math formulas.

Each op runs as a one-equation program that must pass `verify` (so the op's shape rule and
its NumPy semantics agree), and its result is compared with a formula written here from the
op's definition (or with tests/reference.py). Derivative helpers are checked against central
differences of the function they differentiate, and the adjoint ops (``*_vjp``, ``conv1d_dx``,
``pad``/``slice``...) through the identity <A x, g> = <x, A* g>. Scans are checked against
explicit Python loops. `test_every_op_is_covered` keeps this list in step with the op table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from rnnlang.interp import run_program
from rnnlang.ir.nodes import (
    Const,
    ConstRef,
    Eqn,
    InputInfo,
    Operand,
    OutArray,
    Program,
    Region,
    ScanSpec,
    Store,
    SumTo,
    Tap,
    Var,
)
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import Dim, TensorType
from rnnlang.ir.verify import verify
from tests import reference as R

F64 = np.dtype("float64")
H = Dim.of("H")
Arg = np.ndarray | float


def run_op(op: str, args: list[Arg], attrs: Mapping[str, Any] | None = None,
           shapes: Mapping[int, tuple[Dim, ...]] | None = None,
           dims: Mapping[str, int] | None = None) -> np.ndarray:
    """Run ``op`` on ``args`` (arrays become inputs, floats constants) as a verified program.

    ``shapes`` gives symbolic shapes for some inputs (bound through ``dims``); the others get
    their concrete shapes.
    """
    attrs = dict(attrs or {})
    dims = dict(dims or {})
    operands: list[Operand] = []
    inputs: list[InputInfo] = []
    values: dict[str, np.ndarray] = {}
    for i, a in enumerate(args):
        if isinstance(a, float):
            operands.append(Const(a))
            continue
        arr = np.asarray(a, dtype=F64)
        shape = (shapes or {}).get(i, tuple(Dim.of(n) for n in arr.shape))
        var = Var(f"a{i}", TensorType(shape))
        operands.append(var)
        inputs.append(InputInfo(var, "vec"))
        values[var.name] = arr
    out_shape = OPS[op].shape(tuple(x.shape for x in operands), attrs)
    out = Var("out", TensorType(out_shape))
    prog = Program("one", tuple(inputs), (), (Eqn(op, tuple(operands), (out,),
                                                  tuple(attrs.items())),), (out,), ("out",))
    verify(prog)
    (res,) = run_program(prog, values, dims, F64)
    assert res.shape == tuple(d.evaluate(dims) for d in out_shape), "shape rule disagrees"
    return res


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def vec(f: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    return np.vectorize(f, otypes=[np.float64])


# ---- pointwise ops ----------------------------------------------------------------------------------
SQRT2 = math.sqrt(2.0)
UNARY: dict[str, Callable[[float], float]] = {
    "neg": lambda x: -x,
    "identity": lambda x: x,
    "tanh": math.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "relu": lambda x: x if x > 0 else 0.0,
    "softsign": lambda x: x / (1.0 + abs(x)),
    "hard_sigmoid": lambda x: min(max(x / 6.0 + 0.5, 0.0), 1.0),
    "exp": math.exp,
    "log": math.log,
    "softplus": lambda x: math.log1p(math.exp(x)),
    "abs": abs,
    "elu": lambda x: x if x > 0 else math.expm1(x),
    "gelu": lambda x: 0.5 * x * (1.0 + math.erf(x / SQRT2)),
    "sqrt": math.sqrt,
    "square": lambda x: x * x,
}
POSITIVE_ONLY = {"log", "sqrt"}
# points away from the kinks of relu/abs (0) and hard_sigmoid (+-3)
GRID = np.array([-7.5, -3.4, -2.6, -1.3, -0.4, 0.3, 0.9, 2.2, 2.9, 3.3, 6.1])


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op: str) -> None:
    x = np.abs(GRID) + 0.1 if op in POSITIVE_ONLY else GRID
    x = np.stack([x, x[::-1] * 0.5])  # (2, 11)
    np.testing.assert_allclose(run_op(op, [x]), vec(UNARY[op])(x), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("op,x,want", [
    ("sigmoid", [-1000.0, 1000.0, -745.0], [0.0, 1.0, 0.0]),
    ("softplus", [-1000.0, 1000.0, 50.0], [0.0, 1000.0, 50.0]),
    ("elu", [-1000.0, 1000.0], [-1.0, 1000.0]),
    ("gelu", [-40.0, 40.0], [0.0, 40.0]),
    ("tanh", [-1000.0, 1000.0], [-1.0, 1.0]),
    ("hard_sigmoid", [-1000.0, 1000.0], [0.0, 1.0]),
])
def test_unary_extremes_are_stable(op: str, x: list[float], want: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/invalid warnings either
        got = run_op(op, [np.array(x)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


DERIVATIVE_OF = {"d_relu": "relu", "d_softsign": "softsign", "d_hard_sigmoid": "hard_sigmoid",
                 "d_abs": "abs", "d_elu": "elu", "d_gelu": "gelu"}


def numeric_derivative(f: Callable[[float], float], x: np.ndarray, eps: float = 1e-6
                       ) -> np.ndarray:
    return (vec(f)(x + eps) - vec(f)(x - eps)) / (2 * eps)


@pytest.mark.parametrize("op", sorted(DERIVATIVE_OF))
def test_derivative_helpers(op: str) -> None:
    want = numeric_derivative(UNARY[DERIVATIVE_OF[op]], GRID)
    np.testing.assert_allclose(run_op(op, [GRID]), want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("op,f", [("d_tanh", "tanh"), ("d_sigmoid", "sigmoid")])
def test_derivatives_from_outputs(op: str, f: str) -> None:
    """d_tanh(g, y) = g * tanh'(x) where y = tanh(x); likewise for sigmoid."""
    g = rng(1).normal(size=GRID.shape)
    y = vec(UNARY[f])(GRID)
    want = g * numeric_derivative(UNARY[f], GRID)
    np.testing.assert_allclose(run_op(op, [g, y]), want, rtol=1e-7, atol=1e-9)


BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_with_broadcasting_and_constants(op: str) -> None:
    r = rng(2)
    a, b = r.normal(size=(4, 3)), r.uniform(0.5, 2.0, size=(3,))
    m = r.uniform(0.5, 2.0, size=(5, 4, 1))
    s = r.normal(size=(5, 4, 3))
    f = BINARY[op]
    np.testing.assert_allclose(run_op(op, [a, b]), f(a, b[None, :]), rtol=1e-15)
    np.testing.assert_allclose(run_op(op, [s, m]), f(s, m), rtol=1e-15)
    np.testing.assert_allclose(run_op(op, [2.5, b]), f(np.full(3, 2.5), b), rtol=1e-15)
    np.testing.assert_allclose(run_op(op, [a, 0.5]), f(a, np.full_like(a, 0.5)), rtol=1e-15)


def test_select() -> None:
    r = rng(3)
    mask = (np.arange(5)[:, None] < np.array([5, 2, 3])[None, :]).astype(float)[:, :, None]
    a, b = r.normal(size=(5, 3, 4)), r.normal(size=(5, 3, 4))
    want = np.where(mask.astype(bool), a, b)
    np.testing.assert_array_equal(run_op("select", [mask, a, b]), want)
    np.testing.assert_array_equal(run_op("select", [mask, a, 0.0]), np.where(mask > 0, a, 0.0))
    np.testing.assert_array_equal(run_op("select", [mask, 0.0, b]), np.where(mask > 0, 0.0, b))


# ---- linear algebra -----------------------------------------------------------------------------------
def test_matmuls() -> None:
    r = rng(4)
    x2, x3 = r.normal(size=(4, 2)), r.normal(size=(5, 4, 2))
    w = r.normal(size=(2, 3))
    g3 = r.normal(size=(5, 4, 3))
    np.testing.assert_allclose(run_op("matmul", [x2, w]), np.einsum("bi,ij->bj", x2, w))
    np.testing.assert_allclose(run_op("matmul", [x3, w]), np.einsum("tbi,ij->tbj", x3, w))
    np.testing.assert_allclose(run_op("matmul_nt", [g3, w]), np.einsum("tbj,ij->tbi", g3, w))
    np.testing.assert_allclose(run_op("matmul_tn", [x3, g3]), np.einsum("tbi,tbj->ij", x3, g3))
    np.testing.assert_allclose(run_op("matmul_tn", [x2, g3[0]]), x2.T @ g3[0])


# ---- structure: slices, concat, pad, sums ------------------------------------------------------------
def test_slice_concat_pad_with_symbolic_sizes() -> None:
    r = rng(5)
    a = r.normal(size=(4, 9))
    sym = {0: (Dim.of(4), H.scale(3))}
    dims = {"H": 3}
    got = run_op("slice", [a], {"start": H, "stop": H.scale(2)}, sym, dims)
    np.testing.assert_array_equal(got, a[:, 3:6])
    got = run_op("slice", [a], {"start": Dim(), "stop": Dim.of(2)})
    np.testing.assert_array_equal(got, a[:, :2])
    b, c = r.normal(size=(4, 2)), r.normal(size=(4, 1))
    np.testing.assert_array_equal(run_op("concat", [a, b]), np.hstack([a, b]))
    np.testing.assert_array_equal(run_op("concat", [a, b, c]), np.hstack([a, b, c]))
    got = run_op("pad", [b], {"start": H, "total": H.scale(3)}, None, dims)
    want = np.zeros((4, 9))
    want[:, 3:5] = b
    np.testing.assert_array_equal(got, want)


def test_pad_is_the_adjoint_of_slice() -> None:
    r = rng(6)
    a, g = r.normal(size=(3, 7)), r.normal(size=(3, 4))
    s = run_op("slice", [a], {"start": Dim.of(2), "stop": Dim.of(6)})
    p = run_op("pad", [g], {"start": Dim.of(2), "total": Dim.of(7)})
    assert np.isclose(np.sum(s * g), np.sum(a * p))


def test_sum_to_undoes_broadcasting() -> None:
    g = rng(7).normal(size=(5, 4, 3))
    np.testing.assert_allclose(run_op("sum_to", [g], {"shape": (Dim.of(3),)}), g.sum(axis=(0, 1)))
    got = run_op("sum_to", [g], {"shape": (Dim.of(5), Dim.of(4), Dim.of(1))})
    np.testing.assert_allclose(got, g.sum(axis=2, keepdims=True))
    got = run_op("sum_to", [g[0]], {"shape": (Dim.of(1), Dim.of(3))})
    np.testing.assert_allclose(got, g[0].sum(axis=0, keepdims=True))
    got = run_op("sum_to", [g], {"shape": (H,)}, None, {"H": 3})
    np.testing.assert_allclose(got, g.sum(axis=(0, 1)))


def test_zeros() -> None:
    got = run_op("zeros", [], {"shape": (Dim.of(2), H)}, None, {"H": 3})
    np.testing.assert_array_equal(got, np.zeros((2, 3)))


# ---- sequence ops with masks -----------------------------------------------------------------------
T, B = 5, 3
LENGTHS = np.array([5, 1, 3])
MASK = (np.arange(T)[:, None] < LENGTHS[None, :]).astype(float)[:, :, None]


def test_last_and_its_adjoint() -> None:
    r = rng(8)
    seq, g = r.normal(size=(T, B, 4)), r.normal(size=(B, 4))
    got = run_op("last", [seq, MASK])
    np.testing.assert_array_equal(got, R.last_step(seq, LENGTHS))
    back = run_op("last_vjp", [g, MASK], {"time": Dim.of(T)})
    want = np.zeros_like(seq)
    want[LENGTHS - 1, np.arange(B)] = g
    np.testing.assert_array_equal(back, want)
    assert np.isclose(np.sum(got * g), np.sum(seq * back))


def test_mean_and_its_adjoint() -> None:
    r = rng(9)
    seq, g = r.normal(size=(T, B, 4)), r.normal(size=(B, 4))
    got = run_op("mean", [seq, MASK])
    np.testing.assert_allclose(got, R.mean_pool(seq, LENGTHS), rtol=1e-14)
    back = run_op("mean_vjp", [g, MASK])
    assert back.shape == seq.shape and np.all(back[MASK[:, :, 0] == 0] == 0)
    assert np.isclose(np.sum(got * g), np.sum(seq * back))


def test_reverse_within_lengths_is_self_adjoint() -> None:
    r = rng(10)
    seq, g = r.normal(size=(T, B, 2)), r.normal(size=(T, B, 2))
    got = run_op("reverse", [seq, MASK])
    np.testing.assert_array_equal(got, R.reverse_padded(seq, LENGTHS))
    assert np.isclose(np.sum(got * g), np.sum(seq * run_op("reverse", [g, MASK])))
    np.testing.assert_array_equal(run_op("reverse", [got, MASK]), seq * MASK)


def test_repeat_and_sum_time() -> None:
    r = rng(11)
    v, g = r.normal(size=(B, 4)), r.normal(size=(T, B, 4))
    rep = run_op("repeat", [v], {"time": Dim.of("T:x")}, None, {"T:x": T})
    np.testing.assert_array_equal(rep, np.broadcast_to(v, (T, B, 4)))
    st = run_op("sum_time", [g])
    np.testing.assert_allclose(st, g.sum(axis=0))
    assert np.isclose(np.sum(rep * g), np.sum(v * st))


def shifted(seq: np.ndarray, by: int, fallback: np.ndarray | None) -> np.ndarray:
    out = np.empty_like(seq)
    for t in range(seq.shape[0]):
        if t >= by:
            out[t] = seq[t - by]
        else:
            out[t] = 0.0 if fallback is None else fallback
    return out


@pytest.mark.parametrize("by", [1, 2, T - 1, T, 2 * T])
def test_shift(by: int) -> None:
    r = rng(12)
    seq, h0 = r.normal(size=(T, B, 2)), r.normal(size=(B, 2))
    np.testing.assert_array_equal(run_op("shift", [seq, h0], {"by": by}), shifted(seq, by, h0))
    np.testing.assert_array_equal(run_op("shift", [seq], {"by": by}), shifted(seq, by, None))


def test_shift_longer_than_the_sequence() -> None:
    seq, h0 = rng(13).normal(size=(3, 2, 2)), np.ones((2, 2))
    np.testing.assert_array_equal(run_op("shift", [seq, h0], {"by": 4}), shifted(seq, 4, h0))


# ---- convolution ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 2), (3, 2, 4)])
def test_conv1d_and_its_adjoints(stride: int, padding: int, kernel: int) -> None:
    r = rng(14)
    t_in = 7
    t_out = (t_in + 2 * padding - kernel) // stride + 1
    x, w, b = r.normal(size=(t_in, 2, 3)), r.normal(size=(kernel, 3, 4)), r.normal(size=4)
    attrs = {"stride": stride, "padding": padding, "time": Dim.of(t_out), "kernel": kernel}
    y = run_op("conv1d", [x, w, b], attrs)
    np.testing.assert_allclose(y, R.conv1d(x, w, b, stride, padding), rtol=1e-13)
    g = r.normal(size=y.shape)
    dx = run_op("conv1d_dx", [g, w], {"stride": stride, "padding": padding,
                                      "time": Dim.of(t_in)})
    dw = run_op("conv1d_dw", [x, g], {"kernel": kernel, "stride": stride, "padding": padding})
    linear = y - run_op("conv1d", [np.zeros_like(x), w, b], attrs)  # conv without its bias
    assert np.isclose(np.sum(linear * g), np.sum(x * dx))
    assert np.isclose(np.sum(linear * g), np.sum(w * dw))


# ---- scans ----------------------------------------------------------------------------------------
def v(name: str, *shape: int) -> Var:
    return Var(name, TensorType(tuple(Dim.of(n) for n in shape)))


def test_forward_scan_taps_stores_and_sums() -> None:
    """h_t = tanh(x_t + x_{t-2} + h_{t-1} @ U), h_{-1} = h0, x before the start is zero;
    also sums x_t over time and stores h_t."""
    Tn, Bn, n = 4, 2, 3
    x, h0, u = v("x", Tn, Bn, n), v("h0", Bn, n), v("U", n, n)
    xt, xt2, hp, ub = v("xt", Bn, n), v("xt2", Bn, n), v("hp", Bn, n), v("Ub", n, n)
    s1, s2, s3, h = v("s1", Bn, n), v("s2", Bn, n), v("s3", Bn, n), v("h", Bn, n)
    body = Region((xt, xt2, hp, ub), (
        Eqn("add", (xt, xt2), (s1,)), Eqn("matmul", (hp, ub), (s2,)),
        Eqn("add", (s1, s2), (s3,)), Eqn("tanh", (s3,), (h,))), (h, xt))
    spec = ScanSpec(Dim.of(Tn), False, 1, (OutArray("hs"),), 1, 0, body,
                    (Tap(("in", 0), 0), Tap(("in", 0), -2), Tap(("out", 0), -1, 2), ConstRef(1)),
                    (Store(0), SumTo(0)))
    hs, xsum = v("hs", Tn, Bn, n), v("xsum", Bn, n)
    prog = Program("s", (InputInfo(x, "vec"), InputInfo(h0, "vec"), InputInfo(u, "vec")), (),
                   (Eqn("scan", (x, u, h0), (hs, xsum), (("scan", spec),)),), (hs, xsum),
                   ("hs", "xsum"))
    verify(prog)
    r = rng(15)
    vals = {"x": r.normal(size=(Tn, Bn, n)), "h0": r.normal(size=(Bn, n)),
            "U": r.normal(size=(n, n)) * 0.5}
    got_h, got_sum = run_program(prog, vals, {}, F64)
    want, hprev = [], vals["h0"]
    for t in range(Tn):
        x2 = vals["x"][t - 2] if t >= 2 else 0.0
        hprev = np.tanh(vals["x"][t] + x2 + hprev @ vals["U"])
        want.append(hprev)
    np.testing.assert_allclose(got_h, np.stack(want), rtol=1e-14)
    np.testing.assert_allclose(got_sum, vals["x"].sum(axis=0), rtol=1e-14)


def test_reverse_scan_accumulates_and_spills() -> None:
    """acc starts as g; going backwards, acc[t-1] += 0.5 * acc[t]; what falls off the start
    goes to the spill, and d[t] = acc[t] is stored."""
    Tn, Bn, n = 4, 2, 3
    g, d0 = v("g", Tn, Bn, n), v("d0", Bn, n)
    a, half, out = v("a", Bn, n), v("half", Bn, n), v("out", Bn, n)
    body = Region((a,), (Eqn("mul", (a, Const(0.5)), (half,)),
                         Eqn("identity", (a,), (out,))), (half, out))
    spec = ScanSpec(Dim.of(Tn), True, 0, (OutArray("acc", 0), OutArray("d")), 0, 1, body,
                    (Tap(("out", 0), 0),), (Store(0, -1, True, 0), Store(1)))
    acc, d, spill = v("acc", Tn, Bn, n), v("dd", Tn, Bn, n), d0
    prog = Program("r", (InputInfo(g, "vec"),), (),
                   (Eqn("scan", (g,), (acc, d, spill), (("scan", spec),)),), (d, spill),
                   ("d", "spill"))
    verify(prog)
    gv = rng(16).normal(size=(Tn, Bn, n))
    got_d, got_spill = run_program(prog, {"g": gv}, {}, F64)
    want = gv.copy()
    for t in range(Tn - 1, 0, -1):
        want[t - 1] += 0.5 * want[t]
    np.testing.assert_allclose(got_d, want, rtol=1e-14)
    np.testing.assert_allclose(got_spill, 0.5 * want[0], rtol=1e-14)


# ops tested above by dedicated tests (not through the UNARY/BINARY/derivative tables)
STRUCTURAL = {"select", "matmul", "matmul_nt", "matmul_tn", "slice", "concat", "pad", "sum_to",
              "zeros", "last", "last_vjp", "mean", "mean_vjp", "reverse", "repeat", "sum_time",
              "shift", "conv1d", "conv1d_dx", "conv1d_dw", "scan"}


def test_every_op_is_covered() -> None:
    """A new row in the op table needs a test here."""
    covered = set(UNARY) | set(DERIVATIVE_OF) | {"d_tanh", "d_sigmoid"} | set(BINARY) | STRUCTURAL
    assert set(OPS) - covered == set(), "ops without an interpreter test"
