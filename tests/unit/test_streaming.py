"""Stateful streaming: ``compile(..., stateful=True)`` outputs every layer's final states, and
``forward(..., return_state=True)`` carries them from one chunk of a sequence to the next."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import RnnUserError

SPEC = """
model m(H = 4, F = 3, O = 2) {
  input x: seq[F]
  enc = stack(lstm(H), 2) over x
  g = gru(H) over enc
  output y = dense(g, O)
  output z = last(g)
}
"""
STATES = {"final:enc.0.h": "enc.0.h0", "final:enc.0.c": "enc.0.c0",
          "final:enc.1.h": "enc.1.h0", "final:enc.1.c": "enc.1.c0", "final:g.h": "g.h0"}


@pytest.fixture(scope="module", params=["reference", "cpu"])
def model(request: pytest.FixtureRequest, cache_dir: Path) -> rnnlang.Model:
    return rnnlang.compile(SPEC, target=request.param, dtype="float64", stateful=True,
                           cache_dir=cache_dir)


def _x(t: int = 10, b: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, b, 3))


def test_final_state_outputs_are_named_after_the_state_inputs(model: rnnlang.Model) -> None:
    assert model.output_names == ["y", "z", *STATES]
    assert model.state_outputs == STATES
    assert set(model.state_names) == set(STATES.values())


@pytest.mark.parametrize("k", [1, 3, 7])
def test_chunked_equals_whole(model: rnnlang.Model, k: int) -> None:
    x = _x()
    full, final = model.forward({"x": x}, return_state=True)
    assert set(full) == {"y", "z"} and set(final) == set(STATES.values())
    state = None
    ys = []
    for t0 in range(0, x.shape[0], k):
        out, state = model.forward({"x": x[t0:t0 + k]}, initial=state, return_state=True)
        ys.append(out["y"])
    assert state is not None
    np.testing.assert_allclose(np.concatenate(ys), full["y"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["z"], full["z"], rtol=0, atol=1e-12)
    for name in final:
        np.testing.assert_allclose(state[name], final[name], rtol=0, atol=1e-12)


def test_given_initial_state_is_carried(model: rnnlang.Model) -> None:
    x = _x(seed=1)
    rng = np.random.default_rng(2)
    init = {n: rng.normal(size=(2, 4)) for n in STATES.values()}
    full, final = model.forward({"x": x}, initial=init, return_state=True)
    a, sa = model.forward({"x": x[:4]}, initial=init, return_state=True)
    b, sb = model.forward({"x": x[4:]}, initial=sa, return_state=True)
    np.testing.assert_allclose(np.concatenate([a["y"], b["y"]]), full["y"], atol=1e-12)
    for n in final:
        np.testing.assert_allclose(sb[n], final[n], atol=1e-12)


def test_plain_forward_returns_final_outputs_too(model: rnnlang.Model) -> None:
    out = model.forward({"x": _x()})
    assert set(out) == {"y", "z", *STATES}
    np.testing.assert_array_equal(out["final:g.h"], out["z"])  # gru: last(h) is the final h


def test_gradient_of_final_state_outputs(model: rnnlang.Model) -> None:
    """Cotangents for ``final:`` outputs reach parameters and initial states (finite
    differences); absent cotangents count as zero."""
    x = _x(t=5, seed=3)
    rng = np.random.default_rng(4)
    init = {n: rng.normal(size=(2, 4)) * 0.5 for n in STATES.values()}
    cots = {"final:enc.1.c": rng.normal(size=(2, 4)), "final:g.h": rng.normal(size=(2, 4)),
            "y": rng.normal(size=(5, 2, 2))}

    def f() -> float:
        out = model.forward({"x": x}, initial=init)
        return float(sum(np.sum(out[k] * v) for k, v in cots.items()))

    g = model.vjp({"x": x}, cots, initial=init)
    eps = 1e-6
    checks = [("param", "enc.0.W", (1, 2)), ("param", "g.U", (0, 3)),
              ("init", "enc.0.c0", (1, 1)), ("init", "g.h0", (0, 2))]
    for kind, name, ix in checks:
        arr = model.params[name] if kind == "param" else init[name]
        old = arr[ix]
        arr[ix] = old + eps
        up = f()
        arr[ix] = old - eps
        down = f()
        arr[ix] = old
        num = (up - down) / (2 * eps)
        got = (g.params if kind == "param" else g.inputs)[name][ix]
        assert got == pytest.approx(num, rel=1e-5, abs=1e-8), name
    # only a final-state cotangent: the gradient is not zero, and matches y's absence
    g2 = model.vjp({"x": x}, {"final:enc.0.h": np.ones((2, 4))}, initial=init)
    assert np.abs(g2.params["enc.0.W"]).sum() > 0
    assert np.abs(g2.params["g.U"]).sum() == 0  # g does not feed enc's final states


def test_stateless_model_is_unchanged(cache_dir: Path) -> None:
    plain = rnnlang.compile(SPEC, target="reference", dtype="float64")
    stateful = rnnlang.compile(SPEC, target="reference", dtype="float64", stateful=True)
    assert plain.output_names == ["y", "z"] and plain.state_outputs == {}
    assert "final:" not in plain.emit("ir")
    with pytest.raises(RnnUserError, match="stateful=True"):
        plain.forward({"x": _x()}, return_state=True)
    a = plain.forward({"x": _x()})
    b = stateful.forward({"x": _x()})
    np.testing.assert_array_equal(a["y"], b["y"])


@pytest.mark.parametrize("spec, what", [
    ("model m(H = 4, F = 3) { input x: seq[F]\n enc = bidir(lstm(H)) over x\n output y = enc }",
     "bidirectional layer 'enc'"),
    ("model m(H = 4, F = 3) { input x: seq[F]\n input y: seq[F]\n enc = lstm(H) over x\n"
     " dec = lstm(H) over y from enc\n output o = dec }", "layer 'dec'"),
    ("cell c(x[I]) -> h[H] { state s[H] = learnable\n param W[I, H] = glorot\n"
     " s = tanh(x @ W + s[t-1])\n h = s }\n"
     "model m(H = 4, F = 3) { input x: seq[F]\n l = c(H) over x\n output y = l }", "layer 'l'"),
])
def test_unstreamable_layers_are_user_errors(spec: str, what: str) -> None:
    rnnlang.compile(spec, target="reference")  # fine without stateful
    with pytest.raises(RnnUserError, match=what) as ei:
        rnnlang.compile(spec, target="reference", stateful=True)
    assert "E219" in ei.value.render()
