"""Finite-difference checks of the compiled CPU gradients (BPTT), in float64.

Every standard-library cell and every primitive of the language is differentiated through the
generated code (``target="cpu"``) and compared with central differences of the same compiled
forward pass. The loss is the inner product ``sum_k <cot_k, y_k>`` with random cotangents, so
each check covers the full vector-Jacobian product, for every parameter and for the inputs and
initial states (``g.inputs``), with ``T`` of 1 and 7 and with padded (masked) sequences.

Each distinct model text JIT-compiles once per session (several seconds), so the primitives
are grouped into three custom cells; ``T``, ``B`` and the model sizes are runtime values, so
recompiling the same text with other sizes reuses the compiled code. The model texts match
those of the other numerics test modules so that a full run shares their compiled code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from tests import reference as R

EPS = 1e-6
RTOL = 1e-3
ATOL = 1e-5
B, H, F, NO = 2, 3, 2, 2
# (T, lengths): one step, and seven steps with the second sequence padded after 4 steps
CASES = [(1, [1, 1]), (7, [7, 4])]
CASE_IDS = ["T1", "T7-len74"]

Arrays = dict[str, np.ndarray]


def cell_model(layer: str) -> str:
    """One layer over the input, its output sequence as the model's output."""
    return (f"model m(H, O, F) {{\n  input x: seq[F]\n  enc = {layer} over x\n"
            f"  output y = enc\n}}\n")


STD_CELLS = {
    "elman": "elman(H)",
    "elman_relu": "elman(H, phi=relu)",
    "jordan": "jordan(O, H)",
    "lstm": "lstm(H)",
    "gru": "gru(H)",
    "peephole_lstm": "peephole_lstm(H)",
    "indrnn": "indrnn(H)",
    "mgu": "mgu(H)",
}

# A 2-layer LSTM tagger with a per-step projection (also used by the parity and target tests).
TAGGER = """model tagger(H, O, F) {
  input x: seq[F]
  param Wy[H, O] = glorot
  param by[O] = zeros
  enc = stack(lstm(H), 2) over x
  output y = enc @ Wy + by
}
"""

ACTIVATIONS = ["identity", "tanh", "sigmoid", "relu", "softsign", "hard_sigmoid", "exp", "log",
               "softplus", "abs", "elu", "gelu", "sqrt", "square"]
# log and sqrt only see positive arguments; hard_sigmoid is scaled so that both its linear part
# and its flat parts are reached
_ACT_EXPR = {"log": "log(softplus(z) + 1)", "sqrt": "sqrt(softplus(z) + 0.5)",
             "hard_sigmoid": "hard_sigmoid(4 * z)"}

# Every activation as its own output of one cell (all fed by the recurrent pre-activation z),
# so each activation's derivative is checked on its own through BPTT.
ACTS = (
    "cell acts(x[I]) -> h[H], " + ", ".join(f"y_{a}[H]" for a in ACTIVATIONS) + " {\n"
    "  param W[I, H] = glorot\n"
    "  param U[H, H] = orthogonal\n"
    "  param b[H] = zeros\n"
    "  z = x @ W + h[t-1] @ U + b\n"
    + "".join(f"  y_{a} = {_ACT_EXPR.get(a, a + '(z)')}\n" for a in ACTIVATIONS)
    + "  h = tanh(z) + 0.1 * softsign(z)\n"
    "}\n"
    "model m(H, F) {\n"
    "  input x: seq[F]\n"
    "  h, " + ", ".join(f"y_{a}" for a in ACTIVATIONS) + " = acts(H) over x\n"
    "  output y_h = h\n"
    + "".join(f"  output o_{a} = y_{a}\n" for a in ACTIVATIONS)
    + "}\n"
)

# Arithmetic and structure: + - * / (vector and constant operands on both sides), unary minus,
# @, split, concat, slices with symbolic bounds, broadcasting of a parameter vector.
ARITH = """cell arith(x[I]) -> h[H] {
  param W[I, 2*H] = glorot
  param U[H, 2*H] = orthogonal
  param b[2*H] = zeros
  param v[H] = uniform(0.5, 1.5)
  z = x @ W + h[t-1] @ U + b
  p, q = split(z, 2)
  r = concat(p, -q, h[t-1])
  u = r[0:H] * r[H:2*H] - p / (1.5 + square(q)) + 2 / (2 + abs(p))
  w = r[2*H:3*H] / 2 - 1 - 0.5 * q + 3 * v
  h = tanh(u - w * v + (1 - p) * 0.25 - -q)
}
model m(H, F) {
  input x: seq[F]
  enc = arith(H) over x
  output y = enc
}
"""

# Memory: three states (one with a learnable initial value), delays of two steps on a state
# and one step on the input, and an extra output that is not a state.
MEM = """cell mem(x[I]) -> h[H], e[H] {
  state c[H] = learnable
  state s[H]
  param W[I, H] = glorot
  param Wp[I, H] = glorot
  param U[H, H] = orthogonal
  param V[H, H] = orthogonal
  c = tanh(x @ W + x[t-1] @ Wp + h[t-1] @ U)
  s = sigmoid(s[t-2] @ V + c[t-1])
  h = c * s + 0.5 * h[t-2]
  e = s * s[t-1]
}
model m(H, F) {
  input x: seq[F]
  enc, e = mem(H) over x
  output y = enc
  output z = e
}
"""

SOURCES = {**{k: cell_model(v) for k, v in STD_CELLS.items()},
           "tagger": TAGGER, "acts": ACTS, "arith": ARITH, "mem": MEM}
DIMS = {k: {"H": H, "O": NO, "F": F} for k in STD_CELLS} | {
    "tagger": {"H": H, "O": NO, "F": F}, "acts": {"H": H, "F": F}, "arith": {"H": H, "F": F},
    "mem": {"H": H, "F": F}}

Compiler = Callable[..., rnnlang.Model]


@pytest.fixture(scope="module")
def compiled(cache_dir: Path) -> Compiler:
    """compiled(name, **dims): a float64 CPU model; the source compiles (JITs) once."""

    def get(name: str, **dims: int) -> rnnlang.Model:
        return rnnlang.compile(SOURCES[name], target="cpu", dtype="float64",
                               cache_dir=cache_dir, **(dims or DIMS[name]))

    return get


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def randomize(m: rnnlang.Model, rng: np.random.Generator, scale: float = 0.5) -> None:
    """Random parameters (in place), learnable initial states included."""
    for v in m.params.values():
        v[...] = scale * rng.standard_normal(v.shape)


def random_problem(m: rnnlang.Model, T: int, batch: int, feat: int,
                   rng: np.random.Generator) -> tuple[Arrays, Arrays, Arrays]:
    """Random inputs, random initial states for every state input and random cotangents."""
    x = rng.standard_normal((T, batch, feat))
    probe = m.vjp({"x": x})  # shapes of the outputs and of the initial states
    assert set(probe.inputs) == {"x", *m.state_names}
    initial = {k: 0.5 * rng.standard_normal(probe.inputs[k].shape) for k in m.state_names}
    cots = {k: rng.standard_normal(v.shape) for k, v in probe.outputs.items()}
    return {"x": x}, initial, cots


def inner(outs: Arrays, cots: Arrays) -> float:
    return float(sum(np.sum(cots[k] * outs[k]) for k in cots))


def loss_fn(m: rnnlang.Model, inputs: Arrays, initial: Arrays, cots: Arrays,
            lengths: np.ndarray | None) -> Callable[[object], float]:
    """sum_k <cot_k, y_k> of the compiled forward pass, reading the arrays at call time."""

    def f(_: object = None) -> float:
        return inner(m.vjp(inputs, lengths=lengths, initial=initial).outputs, cots)

    return f


def check_fd(m: rnnlang.Model, inputs: Arrays, initial: Arrays, cots: Arrays,
             lengths: np.ndarray | None) -> None:
    """Analytic VJP == central differences for every parameter, input and initial state."""
    g = m.vjp(inputs, cots, lengths=lengths, initial=initial)
    assert set(g.params) == set(m.params)
    assert set(g.inputs) == set(inputs) | set(initial)
    f = loss_fn(m, inputs, initial, cots, lengths)
    for name, arr in [*m.params.items(), *inputs.items(), *initial.items()]:
        analytic = g.params[name] if name in g.params else g.inputs[name]
        assert analytic.shape == arr.shape, name
        numeric = R.numeric_grad(f, arr, eps=EPS)
        np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient of {name}")


def run_fd(m: rnnlang.Model, T: int, lengths: list[int], seed: int,
           only: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    randomize(m, rng)
    inputs, initial, cots = random_problem(m, T, B, F, rng)
    if only is not None:  # cotangent on one output only
        cots = {k: (v if k == only else np.zeros_like(v)) for k, v in cots.items()}
    check_fd(m, inputs, initial, cots, np.array(lengths))


# --------------------------------------------------------------------------------------------
# standard cells, the 2-layer stack, primitives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "lengths"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("cell", list(STD_CELLS))
def test_standard_cell_gradients(compiled: Compiler, cell: str, T: int,
                                 lengths: list[int]) -> None:
    run_fd(compiled(cell), T, lengths, seed=T)


@pytest.mark.parametrize(("T", "lengths"), CASES, ids=CASE_IDS)
def test_two_layer_stack_gradients(compiled: Compiler, T: int, lengths: list[int]) -> None:
    m = compiled("tagger")
    assert {"enc.0.h0", "enc.0.c0", "enc.1.h0", "enc.1.c0"} == set(m.state_names)
    run_fd(m, T, lengths, seed=10 + T)


@pytest.mark.parametrize(("T", "lengths"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_gradients(compiled: Compiler, act: str, T: int, lengths: list[int]) -> None:
    run_fd(compiled("acts"), T, lengths, seed=20 + T, only=f"o_{act}")


@pytest.mark.parametrize(("T", "lengths"), CASES, ids=CASE_IDS)
def test_all_activations_together(compiled: Compiler, T: int, lengths: list[int]) -> None:
    run_fd(compiled("acts"), T, lengths, seed=30 + T)


@pytest.mark.parametrize(("T", "lengths"), CASES, ids=CASE_IDS)
def test_arithmetic_and_structure_gradients(compiled: Compiler, T: int,
                                            lengths: list[int]) -> None:
    run_fd(compiled("arith"), T, lengths, seed=40 + T)


@pytest.mark.parametrize(("T", "lengths"), [*CASES, (7, [3, 6])], ids=[*CASE_IDS, "T7-len36"])
def test_delays_states_learnable_init_gradients(compiled: Compiler, T: int,
                                                lengths: list[int]) -> None:
    m = compiled("mem")
    assert "enc.c0" in m.params  # a learnable initial state is a parameter
    assert {"enc.h0", "enc.s0"} == set(m.state_names)
    run_fd(m, T, lengths, seed=50 + T)


def test_unpadded_batch_without_lengths(compiled: Compiler) -> None:
    """lengths=None (every sequence full) gives the same gradients as explicit full lengths."""
    m = compiled("gru")
    rng = np.random.default_rng(60)
    randomize(m, rng)
    inputs, initial, cots = random_problem(m, 5, B, F, rng)
    check_fd(m, inputs, initial, cots, None)
    g1 = m.vjp(inputs, cots, initial=initial)
    g2 = m.vjp(inputs, cots, lengths=np.array([5, 5]), initial=initial)
    for k in g1.params:
        np.testing.assert_array_equal(g1.params[k], g2.params[k])


def test_padded_steps_get_zero_input_gradient(compiled: Compiler) -> None:
    """Inputs at padded steps do not influence anything: their gradient is exactly zero."""
    m = compiled("lstm")
    rng = np.random.default_rng(61)
    randomize(m, rng)
    inputs, initial, cots = random_problem(m, 7, B, F, rng)
    g = m.vjp(inputs, cots, lengths=np.array([7, 4]), initial=initial)
    assert np.all(g.inputs["x"][4:, 1] == 0.0)
    assert np.all(g.outputs["y"][4:, 1] == 0.0)
    assert np.any(g.inputs["x"][:4, 1] != 0.0)


def test_value_and_grad_matches_vjp(compiled: Compiler) -> None:
    m = compiled("mgu")
    rng = np.random.default_rng(62)
    randomize(m, rng)
    inputs, initial, _ = random_problem(m, 6, B, F, rng)
    target = rng.standard_normal((6, B, H))
    lengths = np.array([6, 2])

    def loss(outs: Arrays) -> tuple[float, Arrays]:
        r = outs["y"] - target
        return 0.5 * float(np.sum(r * r)), {"y": r}

    g = m.value_and_grad(loss, inputs, lengths=lengths, initial=initial)
    out = m.vjp(inputs, lengths=lengths, initial=initial).outputs["y"]
    assert g.loss == pytest.approx(0.5 * float(np.sum((out - target) ** 2)), rel=1e-12)
    ref = m.vjp(inputs, {"y": out - target}, lengths=lengths, initial=initial)
    for k in ref.params:
        np.testing.assert_allclose(g.params[k], ref.params[k], rtol=1e-12, atol=1e-14)
    num = R.numeric_grad(lambda _: m.value_and_grad(loss, inputs, lengths=lengths,
                                                    initial=initial).loss, m.params["enc.Uf"])
    np.testing.assert_allclose(g.params["enc.Uf"], num, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# larger sizes: random directions and Taylor remainders
# --------------------------------------------------------------------------------------------


class Point:
    """All differentiable arrays of one problem (parameters, inputs, initial states)."""

    def __init__(self, m: rnnlang.Model, inputs: Arrays, initial: Arrays):
        self.m = m
        self.params = {k: v.copy() for k, v in m.params.items()}
        self.inputs = inputs
        self.initial = initial

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.params.items()
        yield from self.inputs.items()
        yield from self.initial.items()

    def grad_of(self, g: rnnlang.api.Gradients, name: str) -> np.ndarray:
        return g.params[name] if name in self.params else g.inputs[name]

    def loss_at(self, direction: Arrays, h: float, cots: Arrays,
                lengths: np.ndarray) -> float:
        """L(p + h v), leaving the model's parameters as they were."""
        saved = self.m.params
        self.m.params = {k: v + h * direction[k] for k, v in self.params.items()}
        try:
            inputs = {k: v + h * direction[k] for k, v in self.inputs.items()}
            initial = {k: v + h * direction[k] for k, v in self.initial.items()}
            outs = self.m.vjp(inputs, lengths=lengths, initial=initial).outputs
        finally:
            self.m.params = saved
        return inner(outs, cots)


def _setup(m: rnnlang.Model, T: int, batch: int, feat: int, lengths: list[int],
           seed: int, scale: float = 0.5) -> tuple[Point, Arrays, Arrays, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    randomize(m, rng, scale)
    inputs, initial, cots = random_problem(m, T, batch, feat, rng)
    point = Point(m, inputs, initial)
    direction = {k: rng.standard_normal(v.shape) for k, v in point.items()}
    lens = np.array(lengths)
    g = m.vjp(inputs, cots, lengths=lens, initial=initial)
    directional = sum(float(np.sum(point.grad_of(g, k) * direction[k])) for k, _ in
                      point.items())
    return point, direction, cots, lens, directional


def test_lstm_random_direction_at_larger_size(compiled: Compiler) -> None:
    """<grad, v> equals the central difference of L along a random direction v of every
    parameter, input and initial state (T=20, B=3, H=8), and the VJP is linear in the
    cotangent: <J^T c1, v> + <J^T c2, v> == <J^T (c1 + c2), v>."""
    m = compiled("lstm", H=8, O=2, F=5)
    point, v, cots, lens, directional = _setup(m, 20, 3, 5, [20, 13, 1], seed=70)
    h = 1e-5
    numeric = (point.loss_at(v, h, cots, lens) - point.loss_at(v, -h, cots, lens)) / (2 * h)
    assert directional == pytest.approx(numeric, rel=1e-6, abs=1e-8)

    rng = np.random.default_rng(71)
    c2 = {k: rng.standard_normal(a.shape) for k, a in cots.items()}
    csum = {k: cots[k] + c2[k] for k in cots}

    def along(c: Arrays) -> float:
        g = m.vjp(point.inputs, c, lengths=lens, initial=point.initial)
        return sum(float(np.sum(point.grad_of(g, k) * v[k])) for k, _ in point.items())

    assert along(cots) + along(c2) == pytest.approx(along(csum), rel=1e-10)


@pytest.mark.parametrize("name", ["lstm", "gru", "tagger", "mem"])
def test_taylor_remainder_is_second_order(compiled: Compiler, name: str) -> None:
    """|L(p + h v) - L(p) - h <g, v>| shrinks like h^2 over a long (T=50) padded sequence."""
    m = compiled(name, **{**DIMS[name], "H": 6, "F": 4})
    point, v, cots, lens, directional = _setup(m, 50, 3, 4, [50, 37, 9], seed=80, scale=0.3)
    base = point.loss_at(v, 0.0, cots, lens)
    hs = 2e-3 * 0.5 ** np.arange(6)
    rem = np.array([abs(point.loss_at(v, h, cots, lens) - base - h * directional) for h in hs])
    first = np.array([abs(point.loss_at(v, h, cots, lens) - base) for h in hs])
    assert np.all(rem < 0.1 * first), (rem, first)  # the linear term does the work
    slopes = np.diff(np.log(rem)) / np.diff(np.log(hs))
    assert np.all((slopes > 1.85) & (slopes < 2.15)), slopes


# --------------------------------------------------------------------------------------------
# known bugs
# --------------------------------------------------------------------------------------------


def test_parameter_only_subexpression_in_cell(cache_dir: Path) -> None:
    src = ("cell c(x[I]) -> h[H] {\n  param W[I, H] = glorot\n  param v[H] = ones\n"
           "  h = tanh(x @ W + h[t-1] * (v * 2) + 1 / v + h[t-1] * tanh(v) + exp(v))\n}\n"
           + cell_model("c(H)"))
    m = rnnlang.compile(src, target="cpu", dtype="float64", cache_dir=cache_dir, H=H, O=NO, F=F)
    run_fd(m, 4, [4, 2], seed=90)
