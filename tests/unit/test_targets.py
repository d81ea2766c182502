"""The optimizing pipeline, the unoptimized pipeline (-O0) and the NumPy interpreter agree.

Each model is compiled three ways: ``target="cpu"`` with every pass, ``target="cpu"`` with
``disable_passes=ALL_PASSES``, and ``target="reference"`` (the IR interpreter, the oracle). All
three get the same parameters, inputs, lengths and initial states; forward outputs and every
gradient must agree to float64 round-off. IR verification runs after every pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import rnnlang

ALL_PASSES = ("fuse_gate_matmuls", "hoist_input_projections", "dce")
B, H, F, NO = 2, 3, 2, 2
TIGHT = {"rtol": 1e-10, "atol": 1e-12}

Arrays = dict[str, np.ndarray]


def cell_model(layer: str) -> str:
    """One layer over the input, its output sequence as the model's output."""
    return (f"model m(H, O, F) {{\n  input x: seq[F]\n  enc = {layer} over x\n"
            f"  output y = enc\n}}\n")


TAGGER = """model tagger(H, O, F) {
  input x: seq[F]
  param Wy[H, O] = glorot
  param by[O] = zeros
  enc = stack(lstm(H), 2) over x
  output y = enc @ Wy + by
}
"""

# a time-delay cell: the input two steps back, the state one and three steps back
DELAY = """cell tdnn(x[I]) -> h[H] {
  state s[H]
  param W0[I, H] = glorot
  param W2[I, H] = glorot
  param V[H, H] = orthogonal
  param U[H, H] = orthogonal
  param b[H] = zeros
  s = tanh(x @ W0 + x[t-2] @ W2 + s[t-3] @ V + h[t-1] @ U + b)
  h = sigmoid(s) * s[t-1] + 0.5 * s
}
model m(H, F) {
  input x: seq[F]
  enc = tdnn(H) over x
  output y = enc
}
"""

# a strided convolution (its own time axis and lengths) feeding a bidirectional layer
CONV_BIDIR = """model m(H, F) {
  input x: seq[F]
  c = conv1d(x, channels=4, kernel=3, stride=2, padding=1)
  enc = bidir(elman(H)) over c
  output y = enc
}
"""

MODELS = {"tagger": TAGGER, "mgu": cell_model("mgu(H)"), "delay": DELAY,
          "conv_bidir": CONV_BIDIR}
# every parameter is given explicitly, by name and shape, before the first call
PARAM_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "tagger": {"Wy": (H, NO), "by": (NO,), **{f"enc.{k}.{n}": s for k in (0, 1) for n, s in (
        ("W", (F if k == 0 else H, 4 * H)), ("U", (H, 4 * H)), ("b", (4 * H,)))}},
    "mgu": {f"enc.{n}": s for n, s in (("Wf", (F, H)), ("Uf", (H, H)), ("bf", (H,)),
                                       ("Wh", (F, H)), ("Uh", (H, H)), ("bh", (H,)))},
    "delay": {f"enc.{n}": s for n, s in (("W0", (F, H)), ("W2", (F, H)), ("V", (H, H)),
                                         ("U", (H, H)), ("b", (H,)))},
    "conv_bidir": {"c.W": (3, F, 4), "c.b": (4,), **{f"enc.{d}.{n}": s for d in ("fwd", "bwd")
                                                      for n, s in (("Wx", (4, H)), ("Ws", (H, H)),
                                                                   ("b", (H,)))}},
}
STATES = {"tagger": [f"enc.{k}.{s}0" for k in (0, 1) for s in "hc"], "mgu": ["enc.h0"],
          "delay": ["enc.h0", "enc.s0"], "conv_bidir": ["enc.fwd.s0", "enc.bwd.s0"]}
OUT_WIDTH = {"tagger": NO, "mgu": H, "delay": H, "conv_bidir": 2 * H}
VARIANTS = ["cpu", "cpu-O0", "reference"]

Trio = dict[str, rnnlang.Model]


# every work array starts as NaN (conftest.poisoned_workspaces)
pytestmark = pytest.mark.usefixtures("poisoned_workspaces")


@pytest.fixture(scope="module")
def trios(cache_dir: Path) -> Callable[[str], Trio]:
    made: dict[str, Trio] = {}

    def get(name: str) -> Trio:
        if name not in made:
            opts = {"cpu": ("cpu", ()), "cpu-O0": ("cpu", ALL_PASSES),
                    "reference": ("reference", ())}
            # F is left to the data: parameters are set before the first call
            dims = {"H": H, "O": NO} if name in ("tagger", "mgu") else {"H": H}
            made[name] = {v: rnnlang.compile(MODELS[name], target=t, dtype="float64",
                                             cache_dir=cache_dir, disable_passes=d,
                                             verify_ir=True, **dims)
                          for v, (t, d) in opts.items()}
        return made[name]

    return get


def problem(name: str, T: int, lengths: list[int], seed: int,
            ) -> tuple[Arrays, Arrays, Arrays, Arrays, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {k: 0.5 * rng.standard_normal(s) for k, s in PARAM_SHAPES[name].items()}
    x = rng.standard_normal((T, B, F))
    initial = {k: 0.5 * rng.standard_normal((B, H)) for k in STATES[name]}
    t_out = (T + 2 - 3) // 2 + 1 if name == "conv_bidir" else T
    cot = {"y": rng.standard_normal((t_out, B, OUT_WIDTH[name]))}
    return params, {"x": x}, initial, cot, np.array(lengths)


@pytest.mark.parametrize(("T", "lengths"), [(9, [9, 5]), (1, [1, 1]), (4, [2, 4])],
                         ids=["T9-len95", "T1", "T4-len24"])
@pytest.mark.parametrize("name", list(MODELS))
def test_pipelines_agree(trios: Callable[[str], Trio], name: str, T: int,
                         lengths: list[int]) -> None:
    trio = trios(name)
    params, inputs, initial, cot, lens = problem(name, T, lengths, seed=T)
    fwd: dict[str, Arrays] = {}
    grads: dict[str, rnnlang.api.Gradients] = {}
    for v, m in trio.items():
        m.params = {k: a.copy() for k, a in params.items()}
        assert set(m.state_names) == set(initial)
        fwd[v] = m.forward(inputs, lengths=lens, initial=initial)
        grads[v] = m.vjp(inputs, cot, lengths=lens, initial=initial)
        assert set(grads[v].params) == set(params)
        assert set(grads[v].inputs) == {"x", *initial}
        # the training forward pass computes the same outputs as the plain one
        np.testing.assert_allclose(grads[v].outputs["y"], fwd[v]["y"], **TIGHT)
    ref = "reference"
    for v in ("cpu", "cpu-O0"):
        np.testing.assert_allclose(fwd[v]["y"], fwd[ref]["y"], **TIGHT, err_msg=v)
        for k in params:
            np.testing.assert_allclose(grads[v].params[k], grads[ref].params[k], **TIGHT,
                                       err_msg=f"{v}: {k}")
        for k in grads[ref].inputs:
            np.testing.assert_allclose(grads[v].inputs[k], grads[ref].inputs[k], **TIGHT,
                                       err_msg=f"{v}: {k}")
    assert np.any(grads[ref].params[next(iter(params))] != 0.0)


@pytest.mark.parametrize("name", list(MODELS))
def test_passes_change_the_program(trios: Callable[[str], Trio], name: str) -> None:
    """The optimized and unoptimized programs really differ (so the agreement means something)
    while the interpreter runs the optimized program."""
    trio = trios(name)
    assert trio["cpu"].emit("ir") != trio["cpu-O0"].emit("ir")
    assert trio["cpu"].emit("ir") == trio["reference"].emit("ir")
    assert not set(trio["cpu-O0"].pass_log.applied) & set(ALL_PASSES)
    assert set(ALL_PASSES) <= set(trio["cpu"].pass_log.applied)


# --------------------------------------------------------------------------------------------
# known bugs
# --------------------------------------------------------------------------------------------

COLLIDING_NAMES = """cell c(x[I]) -> h[H] {
  state s[H]
  param W[I, H] = glorot
  s = tanh(x @ W + s[t-1])
  h = s * s
}
model m(H, F) {
  input x: seq[F]
  h = c(H) over x
  output y = h
}
"""


def test_generated_names_do_not_collide(cache_dir: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, B, F))
    outs = [rnnlang.compile(COLLIDING_NAMES, target=t, dtype="float64", cache_dir=cache_dir,
                            H=H, F=F).forward({"x": x}, lengths=np.array([5, 3]))["y"]
            for t in ("reference", "cpu")]
    np.testing.assert_allclose(outs[1], outs[0], **TIGHT)
