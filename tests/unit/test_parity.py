"""Parity of the compiled CPU code with the independent NumPy reference (tests/reference.py).

Parameters are drawn by the reference, copied into the model by name (``m.params["enc.W"]``)
and both sides run on the same data. Forward outputs and gradients (the reference's hand-written
BPTT, chained through the wiring by hand) agree to float64 round-off; one float32 run per main
cell agrees with the float64 reference to float32 accuracy.

Model texts match those of the other numerics test modules so that a full run compiles each
model once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlang
from tests import reference as R

B, H, F, NO = 2, 3, 2, 2
T = 7
LENGTHS = np.array([7, 4])
# float64: the compiled code and the reference differ only by summation order
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# float32 against the float64 reference
F32_FWD = {"rtol": 1e-5, "atol": 1e-6}
F32_GRAD = {"rtol": 1e-5, "atol": 1e-5}

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

BIDIR_CONCAT = """model m(H, F) {
  input x: seq[F]
  enc = bidir(gru(H)) over x
  output y = enc
}
"""

BIDIR_SUM = """model m(H, F) {
  input x: seq[F]
  enc = bidir(elman(H), merge=sum) over x
  output y = enc
}
"""

ENC_DEC = """model seq2seq(H, F, G) {
  input x: seq[F]
  input z: seq[G]
  enc = lstm(H) over x
  dec = lstm(H) over z from enc
  output y = dec
}
"""

CONV_SAME = """model m(H, F) {
  input x: seq[F]
  c = conv1d(x, channels=4, kernel=3, stride=1, padding=1)
  enc = lstm(H) over c
  output y = enc
}
"""

# stride 2 without padding: a shorter time axis with its own lengths, and pooling heads on it
CONV_STRIDED_POOLED = """model m(H, F, O) {
  input x: seq[F]
  param Wy[H, O] = glorot
  c = conv1d(x, channels=4, kernel=3, stride=2)
  enc = lstm(H) over c
  output y = enc
  output p = last(enc) @ Wy
  output q = mean(enc)
}
"""

# reference state names of each cell, by the model's state input names
STATE_NAMES = {"elman": {"enc.s0": "h"}, "jordan": {"enc.y0": "y"},
               "lstm": {"enc.h0": "h", "enc.c0": "c"}, "gru": {"enc.h0": "h"},
               "peephole_lstm": {"enc.h0": "h", "enc.c0": "c"}, "indrnn": {"enc.h0": "h"},
               "mgu": {"enc.h0": "h"}}
SEQ = {"elman": R.elman_seq, "jordan": R.jordan_seq, "lstm": R.lstm_seq, "gru": R.gru_seq,
       "peephole_lstm": R.peephole_lstm_seq, "indrnn": R.indrnn_seq, "mgu": R.mgu_seq}
BPTT = {"elman": R.elman_bptt, "lstm": R.lstm_bptt, "gru": R.gru_bptt}

Compiler = Callable[..., rnnlang.Model]


@pytest.fixture(scope="module")
def compiled(cache_dir: Path) -> Compiler:
    def get(src: str, dtype: str = "float64", **dims: int) -> rnnlang.Model:
        return rnnlang.compile(src, target="cpu", dtype=dtype, cache_dir=cache_dir, **dims)

    return get


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def set_params(m: rnnlang.Model, prefix: str, params: Arrays) -> None:
    """Copy reference parameters into the model: ``prefix + name``, same shapes."""
    for k, v in params.items():
        name = prefix + k
        assert m.params[name].shape == v.shape, name
        m.params[name][...] = v


def take_params(params: Arrays, prefix: str, names: Any) -> Arrays:
    return {k: params[prefix + k] for k in names}


def random_states(rng: np.random.Generator, names: dict[str, str], n: int) -> dict[str, Any]:
    """Random initial states keyed by the model's names, and the same keyed by the reference's."""
    model = {k: 0.5 * rng.standard_normal((B, n)) for k in names}
    return {"model": model, "ref": {names[k]: v for k, v in model.items()}}


def masked(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return np.where(R.step_mask(lengths, x.shape[0], x.shape[1])[:, :, None], x, 0.0)


def conv_backward(x: np.ndarray, W: np.ndarray, dout: np.ndarray, stride: int,
                  padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjoint of R.conv1d: gradients of x, W and b for the output cotangent ``dout``."""
    Tx = x.shape[0]
    K = W.shape[0]
    xpad = np.zeros((Tx + 2 * padding,) + x.shape[1:])
    xpad[padding: padding + Tx] = x
    dxpad = np.zeros_like(xpad)
    dW = np.zeros_like(W)
    for t in range(dout.shape[0]):
        for k in range(K):
            dW[k] += xpad[t * stride + k].T @ dout[t]
            dxpad[t * stride + k] += dout[t] @ W[k].T
    return dxpad[padding: padding + Tx], dW, dout.sum(axis=(0, 1))


# --------------------------------------------------------------------------------------------
# single cells
# --------------------------------------------------------------------------------------------


def _cell_case(kind: str, m: rnnlang.Model, rng: np.random.Generator, steps: int = T,
               ) -> tuple[np.ndarray, dict[str, Any], Arrays]:
    p = R.random_params(kind, F, H, rng, output_size=NO)
    set_params(m, "enc.", p)
    x = rng.standard_normal((steps, B, F))
    n = NO if kind == "jordan" else H
    return x, random_states(rng, STATE_NAMES[kind], n), p


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
@pytest.mark.parametrize(("steps", "lengths"), [(T, [7, 4]), (1, [1, 1]), (5, None)],
                         ids=["T7-len74", "T1", "T5-full"])
def test_cell_forward_and_bptt(compiled: Compiler, kind: str, steps: int,
                               lengths: list[int] | None) -> None:
    m = compiled(cell_model(f"{kind}(H)"), H=H, O=NO, F=F)
    rng = np.random.default_rng(1)
    x, st, p = _cell_case(kind, m, rng, steps)
    lens = None if lengths is None else np.array(lengths)
    ys, _ = SEQ[kind](p, x, lens, st["ref"])
    out = m.forward({"x": x}, lengths=lens, initial=st["model"])
    np.testing.assert_allclose(out["y"], ys, **TIGHT)

    dY = rng.standard_normal(ys.shape)
    ref = BPTT[kind](p, x, dY, lengths=lens, init=st["ref"])
    g = m.vjp({"x": x}, {"y": dY}, lengths=lens, initial=st["model"])
    np.testing.assert_allclose(g.outputs["y"], ys, **TIGHT)
    for k in p:
        np.testing.assert_allclose(g.params["enc." + k], ref[k], **TIGHT, err_msg=k)
    np.testing.assert_allclose(g.inputs["x"], ref["xs"], **TIGHT)
    for mk, rk in STATE_NAMES[kind].items():
        np.testing.assert_allclose(g.inputs[mk], ref["init"][rk], **TIGHT, err_msg=mk)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_cell_float32_against_float64_reference(compiled: Compiler, kind: str) -> None:
    m = compiled(cell_model(f"{kind}(H)"), dtype="float32", H=H, O=NO, F=F)
    rng = np.random.default_rng(2)
    x, st, p = _cell_case(kind, m, rng)
    assert all(v.dtype == np.float32 for v in m.params.values())
    p32 = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}  # as stored
    ys, _ = SEQ[kind](p32, x, LENGTHS, st["ref"])
    dY = rng.standard_normal(ys.shape)
    ref = BPTT[kind](p32, x, dY, lengths=LENGTHS, init=st["ref"])
    out = m.forward({"x": x}, lengths=LENGTHS, initial=st["model"])
    assert out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], ys, **F32_FWD)
    g = m.vjp({"x": x}, {"y": dY}, lengths=LENGTHS, initial=st["model"])
    assert all(v.dtype == np.float32 for v in [*g.params.values(), *g.inputs.values()])
    np.testing.assert_allclose(g.outputs["y"], ys, **F32_FWD)
    for k in p:
        np.testing.assert_allclose(g.params["enc." + k], ref[k], **F32_GRAD, err_msg=k)
    np.testing.assert_allclose(g.inputs["x"], ref["xs"], **F32_GRAD)
    for mk, rk in STATE_NAMES[kind].items():
        np.testing.assert_allclose(g.inputs[mk], ref["init"][rk], **F32_GRAD, err_msg=mk)


@pytest.mark.parametrize("kind", ["jordan", "peephole_lstm", "indrnn", "mgu"])
def test_other_cells_forward(compiled: Compiler, kind: str) -> None:
    layer = "jordan(O, H)" if kind == "jordan" else f"{kind}(H)"
    m = compiled(cell_model(layer), H=H, O=NO, F=F)
    rng = np.random.default_rng(3)
    x, st, p = _cell_case(kind, m, rng)
    if kind == "indrnn":  # keep the relu units active often enough to matter
        m.params["enc.b"][...] = p["b"] = np.abs(p["b"])
    ys, final = SEQ[kind](p, x, LENGTHS, st["ref"])
    out = m.forward({"x": x}, lengths=LENGTHS, initial=st["model"])
    np.testing.assert_allclose(out["y"], ys, **TIGHT)
    assert np.all(out["y"][4:, 1] == 0.0)  # padded steps output zero


# --------------------------------------------------------------------------------------------
# wiring: stacks, bidirectional layers, encoder-decoder, convolutions, pooling
# --------------------------------------------------------------------------------------------


def test_two_layer_stack(compiled: Compiler) -> None:
    m = compiled(TAGGER, H=H, O=NO, F=F)
    rng = np.random.default_rng(4)
    p0 = R.random_params("lstm", F, H, rng)
    p1 = R.random_params("lstm", H, H, rng)
    Wy, by = rng.standard_normal((H, NO)), rng.standard_normal(NO)
    set_params(m, "enc.0.", p0)
    set_params(m, "enc.1.", p1)
    set_params(m, "", {"Wy": Wy, "by": by})
    x = rng.standard_normal((T, B, F))
    s0 = random_states(rng, {"enc.0.h0": "h", "enc.0.c0": "c"}, H)
    s1 = random_states(rng, {"enc.1.h0": "h", "enc.1.c0": "c"}, H)
    initial = s0["model"] | s1["model"]

    ys0, _ = R.lstm_seq(p0, x, LENGTHS, s0["ref"])
    ys1, _ = R.lstm_seq(p1, ys0, LENGTHS, s1["ref"])
    y = ys1 @ Wy + by
    stacked, _ = R.stack_seq(R.lstm_seq, [p0, p1], x, LENGTHS, [s0["ref"], s1["ref"]])
    np.testing.assert_allclose(stacked, ys1, rtol=0, atol=0)
    np.testing.assert_allclose(m.forward({"x": x}, lengths=LENGTHS, initial=initial)["y"], y,
                               **TIGHT)

    dY = rng.standard_normal(y.shape)
    g = m.vjp({"x": x}, {"y": dY}, lengths=LENGTHS, initial=initial)
    r1 = R.lstm_bptt(p1, ys0, dY @ Wy.T, lengths=LENGTHS, init=s1["ref"])
    r0 = R.lstm_bptt(p0, x, r1["xs"], lengths=LENGTHS, init=s0["ref"])
    np.testing.assert_allclose(g.params["Wy"], np.einsum("tbh,tbo->ho", ys1, dY), **TIGHT)
    np.testing.assert_allclose(g.params["by"], dY.sum(axis=(0, 1)), **TIGHT)
    for layer, r in (("enc.0.", r0), ("enc.1.", r1)):
        for k in ("W", "U", "b"):
            np.testing.assert_allclose(g.params[layer + k], r[k], **TIGHT, err_msg=layer + k)
        for s in ("h", "c"):
            np.testing.assert_allclose(g.inputs[f"{layer}{s}0"], r["init"][s], **TIGHT)
    np.testing.assert_allclose(g.inputs["x"], r0["xs"], **TIGHT)


@pytest.mark.parametrize(("merge", "kind"), [("concat", "gru"), ("sum", "elman")])
def test_bidirectional(compiled: Compiler, merge: str, kind: str) -> None:
    m = compiled(BIDIR_CONCAT if merge == "concat" else BIDIR_SUM, H=H, F=F)
    rng = np.random.default_rng(5)
    pf = R.random_params(kind, F, H, rng)
    pb = R.random_params(kind, F, H, rng)
    set_params(m, "enc.fwd.", pf)
    set_params(m, "enc.bwd.", pb)
    sname = "s0" if kind == "elman" else "h0"
    sf = random_states(rng, {f"enc.fwd.{sname}": "h"}, H)
    sb = random_states(rng, {f"enc.bwd.{sname}": "h"}, H)
    x = rng.standard_normal((T, B, F))
    lengths = np.array([7, 3])
    initial = sf["model"] | sb["model"]

    ys, _ = R.bidirectional_seq(SEQ[kind], pf, pb, x, lengths, merge, sf["ref"], sb["ref"])
    out = m.forward({"x": x}, lengths=lengths, initial=initial)
    np.testing.assert_allclose(out["y"], ys, **TIGHT)

    dY = rng.standard_normal(ys.shape)
    dYf, dYb = (dY[..., :H], dY[..., H:]) if merge == "concat" else (dY, dY)
    rf = BPTT[kind](pf, x, dYf, lengths=lengths, init=sf["ref"])
    # the backward direction reads reverse(x) and its outputs are reversed back; reversing
    # within the lengths is its own adjoint
    rb = BPTT[kind](pb, R.reverse_padded(x, lengths), R.reverse_padded(dYb, lengths),
                    lengths=lengths, init=sb["ref"])
    g = m.vjp({"x": x}, {"y": dY}, lengths=lengths, initial=initial)
    for prefix, r in (("enc.fwd.", rf), ("enc.bwd.", rb)):
        for k in pf:
            np.testing.assert_allclose(g.params[prefix + k], r[k], **TIGHT, err_msg=prefix + k)
        np.testing.assert_allclose(g.inputs[prefix + sname], r["init"]["h"], **TIGHT)
    dx = rf["xs"] + R.reverse_padded(rb["xs"], lengths)
    np.testing.assert_allclose(g.inputs["x"], dx, **TIGHT)


def test_encoder_decoder(compiled: Compiler) -> None:
    G, Tz = 3, 5
    m = compiled(ENC_DEC, H=H, F=F, G=G)
    assert set(m.state_names) == {"enc.h0", "enc.c0"}  # the decoder starts from the encoder
    rng = np.random.default_rng(6)
    pe = R.random_params("lstm", F, H, rng)
    pd = R.random_params("lstm", G, H, rng)
    set_params(m, "enc.", pe)
    set_params(m, "dec.", pd)
    x = rng.standard_normal((T, B, F))
    z = rng.standard_normal((Tz, B, G))
    lx, lz = np.array([4, 7]), np.array([5, 2])
    st = random_states(rng, {"enc.h0": "h", "enc.c0": "c"}, H)
    lengths = {"x": lx, "z": lz}

    ys, _ = R.encoder_decoder(R.lstm_seq, pe, R.lstm_seq, pd, x, z, lx, lz, st["ref"])
    out = m.forward({"x": x, "z": z}, lengths=lengths, initial=st["model"])
    np.testing.assert_allclose(out["y"], ys, **TIGHT)

    dY = rng.standard_normal(ys.shape)
    _, enc_final = R.lstm_seq(pe, x, lx, st["ref"])
    rd = R.lstm_bptt(pd, z, dY, lengths=lz, init=enc_final)
    re = R.lstm_bptt(pe, x, np.zeros((T, B, H)), lengths=lx, init=st["ref"],
                     dfinal=rd["init"])
    g = m.vjp({"x": x, "z": z}, {"y": dY}, lengths=lengths, initial=st["model"])
    for prefix, r in (("enc.", re), ("dec.", rd)):
        for k in ("W", "U", "b"):
            np.testing.assert_allclose(g.params[prefix + k], r[k], **TIGHT, err_msg=prefix + k)
    np.testing.assert_allclose(g.inputs["z"], rd["xs"], **TIGHT)
    np.testing.assert_allclose(g.inputs["x"], re["xs"], **TIGHT)
    for s in ("h", "c"):
        np.testing.assert_allclose(g.inputs[f"enc.{s}0"], re["init"][s], **TIGHT)


def _conv_model(compiled: Compiler, src: str, rng: np.random.Generator, Tx: int,
                **dims: int) -> tuple[rnnlang.Model, Arrays, Arrays, np.ndarray]:
    # F is read from the data, so the parameters are set before the first call
    m = compiled(src, H=H, **dims)
    assert m.params == {}
    C, K = 4, 3
    conv = {"W": 0.5 * rng.standard_normal((K, F, C)), "b": 0.5 * rng.standard_normal(C)}
    lstm = R.random_params("lstm", C, H, rng)
    m.params = {"c.W": conv["W"].copy(), "c.b": conv["b"].copy(),
                **{"enc." + k: v.copy() for k, v in lstm.items()},
                **({"Wy": rng.standard_normal((H, dims["O"]))} if "O" in dims else {})}
    return m, conv, lstm, rng.standard_normal((Tx, B, F))


def test_conv1d_same_padding_into_lstm(compiled: Compiler) -> None:
    rng = np.random.default_rng(7)
    m, conv, lstm, x = _conv_model(compiled, CONV_SAME, rng, T)
    st = random_states(rng, {"enc.h0": "h", "enc.c0": "c"}, H)
    xm = masked(x, LENGTHS)  # the convolution sees zeros past each sequence's end
    c = R.conv1d(xm, conv["W"], conv["b"], stride=1, padding=1)
    ys, _ = R.lstm_seq(lstm, c, LENGTHS, st["ref"])
    out = m.forward({"x": x}, lengths=LENGTHS, initial=st["model"])
    np.testing.assert_allclose(out["y"], ys, **TIGHT)

    dY = rng.standard_normal(ys.shape)
    r = R.lstm_bptt(lstm, c, dY, lengths=LENGTHS, init=st["ref"])
    dxm, dW, db = conv_backward(xm, conv["W"], r["xs"], 1, 1)
    g = m.vjp({"x": x}, {"y": dY}, lengths=LENGTHS, initial=st["model"])
    for k in ("W", "U", "b"):
        np.testing.assert_allclose(g.params["enc." + k], r[k], **TIGHT, err_msg=k)
    np.testing.assert_allclose(g.params["c.W"], dW, **TIGHT)
    np.testing.assert_allclose(g.params["c.b"], db, **TIGHT)
    np.testing.assert_allclose(g.inputs["x"], masked(dxm, LENGTHS), **TIGHT)
    np.testing.assert_allclose(g.inputs["enc.c0"], r["init"]["c"], **TIGHT)


def test_conv1d_stride2_into_lstm_with_pooling_heads(compiled: Compiler) -> None:
    rng = np.random.default_rng(8)
    Tx, K, stride = 9, 3, 2
    m, conv, lstm, x = _conv_model(compiled, CONV_STRIDED_POOLED, rng, Tx, O=NO)
    Wy = m.params["Wy"].copy()
    lengths = np.array([9, 6])
    # the strided axis: T' = (T - K) // stride + 1 steps; a sequence of length L keeps the
    # (L - K) // stride + 1 windows that lie inside it
    Tc = (Tx - K) // stride + 1
    lc = np.clip((lengths - K) // stride + 1, 1, Tc)
    assert Tc == 4 and lc.tolist() == [4, 2]
    st = random_states(rng, {"enc.h0": "h", "enc.c0": "c"}, H)
    xm = masked(x, lengths)
    c = R.conv1d(xm, conv["W"], conv["b"], stride=stride)
    ys, _ = R.lstm_seq(lstm, c, lc, st["ref"])
    p = R.last_step(ys, lc) @ Wy
    q = R.mean_pool(ys, lc)
    out = m.forward({"x": x}, lengths=lengths, initial=st["model"])
    np.testing.assert_allclose(out["y"], ys, **TIGHT)
    np.testing.assert_allclose(out["p"], p, **TIGHT)
    np.testing.assert_allclose(out["q"], q, **TIGHT)

    dY, dP, dQ = (rng.standard_normal(a.shape) for a in (ys, p, q))
    dys = dY.copy()
    mask = R.step_mask(lc, Tc, B)
    for b in range(B):
        dys[lc[b] - 1, b] += dP[b] @ Wy.T
        dys[: lc[b], b] += dQ[b] / lc[b]
    r = R.lstm_bptt(lstm, c, dys * mask[:, :, None], lengths=lc, init=st["ref"])
    dxm, dW, db = conv_backward(xm, conv["W"], r["xs"], stride, 0)
    g = m.vjp({"x": x}, {"y": dY, "p": dP, "q": dQ}, lengths=lengths,
              initial=st["model"])
    np.testing.assert_allclose(g.params["Wy"], R.last_step(ys, lc).T @ dP, **TIGHT)
    for k in ("W", "U", "b"):
        np.testing.assert_allclose(g.params["enc." + k], r[k], **TIGHT, err_msg=k)
    np.testing.assert_allclose(g.params["c.W"], dW, **TIGHT)
    np.testing.assert_allclose(g.params["c.b"], db, **TIGHT)
    np.testing.assert_allclose(g.inputs["x"], masked(dxm, lengths), **TIGHT)
    np.testing.assert_allclose(g.inputs["enc.h0"], r["init"]["h"], **TIGHT)


# --------------------------------------------------------------------------------------------
# regressions
# --------------------------------------------------------------------------------------------


def test_conv1d_default_initializer(compiled: Compiler) -> None:
    """Regression: conv1d()/dense() parameters got InitSpec('glorot') without its gain argument
    and runtime._init failed with IndexError as soon as the sizes were known."""
    m = compiled(CONV_SAME, H=H, F=F)  # no call: nothing is JIT-compiled
    assert m.params["c.W"].shape == (3, F, 4) and np.all(np.isfinite(m.params["c.W"]))
    assert np.any(m.params["c.W"] != 0.0) and np.all(m.params["c.b"] == 0.0)


@pytest.mark.parametrize("case", ["model", "cell"])
def test_layer_output_used_twice(case: str) -> None:
    """Regression: Builder.rename renamed a value's defining equation but not its other uses, so
    `output y = enc` next to `last(enc)`, or an alias `a = z` in a cell, read an undefined
    value. A lowering bug, so the interpreter shows it without any JIT compile."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((T, B, F))
    p = R.random_params("elman", F, H, rng)
    if case == "model":
        src = ("model m(H, F) {\n  input x: seq[F]\n  enc = elman(H) over x\n"
               "  output y = enc\n  output p = last(enc)\n}\n")
    else:
        src = ("cell c(x[I]) -> s[H] {\n  param Wx[I, H] = glorot\n  param Ws[H, H] = orthogonal"
               "\n  param b[H] = zeros\n  z = x @ Wx\n  a = z\n"
               "  s = tanh(0.5 * a + 0.5 * z + b + s[t-1] @ Ws)\n}\n"
               "model m(H, F) {\n  input x: seq[F]\n  enc = c(H) over x\n"
               "  output y = enc\n}\n")
    m = rnnlang.compile(src, target="reference", dtype="float64", H=H, F=F)
    set_params(m, "enc.", p)
    out = m.forward({"x": x}, lengths=LENGTHS)
    ys, _ = R.elman_seq(p, x, LENGTHS)
    np.testing.assert_allclose(out["y"], ys, **TIGHT)
    if case == "model":
        np.testing.assert_allclose(out["p"], R.last_step(ys, LENGTHS), **TIGHT)
