"""Parity with PyTorch's recurrent layers (float64): outputs and autograd gradients.

Weights are copied with the documented mapping (see rnnlang/stdlib/cells.rnn):

* elman: ``Wx = weight_ih_l0.T``, ``Ws = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``
* lstm: ``W = weight_ih_l0.T``, ``U = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0``
* gru: ``W = weight_ih_l0.T``, ``U = weight_hh_l0.T``, ``bx = bias_ih_l0``, ``bh = bias_hh_l0``

Padded batches run through ``pack_padded_sequence`` on the PyTorch side and ``lengths`` on
ours. Model texts match those of the other numerics test modules (shared compiled code).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlang

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

T, B, H, F, NO = 7, 3, 4, 3, 2
LENGTHS = [7, 4, 6]  # unsorted on purpose
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

BIDIR_CONCAT = """model m(H, F) {
  input x: seq[F]
  enc = bidir(gru(H)) over x
  output y = enc
}
"""

Compiler = Callable[..., rnnlang.Model]


@pytest.fixture(scope="module")
def compiled(cache_dir: Path) -> Compiler:
    def get(src: str, **dims: int) -> rnnlang.Model:
        return rnnlang.compile(src, target="cpu", dtype="float64", cache_dir=cache_dir, **dims)

    return get


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def np_(t: Any) -> np.ndarray:
    return t.detach().numpy()


def weight_map(kind: str, mod: Any, suffix: str) -> dict[str, Any]:
    """Our parameter (without the layer prefix) -> (tensor, how to turn it into ours)."""
    w_ih, w_hh = getattr(mod, f"weight_ih{suffix}"), getattr(mod, f"weight_hh{suffix}")
    b_ih, b_hh = getattr(mod, f"bias_ih{suffix}"), getattr(mod, f"bias_hh{suffix}")
    if kind == "gru":
        return {"W": np_(w_ih).T, "U": np_(w_hh).T, "bx": np_(b_ih), "bh": np_(b_hh)}
    names = ("Wx", "Ws", "b") if kind == "elman" else ("W", "U", "b")
    return dict(zip(names, (np_(w_ih).T, np_(w_hh).T, np_(b_ih + b_hh)), strict=True))


def grad_map(kind: str, mod: Any, suffix: str) -> dict[str, list[np.ndarray]]:
    """Our parameter -> the PyTorch gradients it must equal (both biases for a summed bias)."""
    g = {n: getattr(mod, f"{n}{suffix}").grad.numpy() for n in
         ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    if kind == "gru":
        return {"W": [g["weight_ih"].T], "U": [g["weight_hh"].T], "bx": [g["bias_ih"]],
                "bh": [g["bias_hh"]]}
    names = ("Wx", "Ws", "b") if kind == "elman" else ("W", "U", "b")
    return dict(zip(names, ([g["weight_ih"].T], [g["weight_hh"].T],
                            [g["bias_ih"], g["bias_hh"]]), strict=True))


def set_params(m: rnnlang.Model, prefix: str, params: Arrays) -> None:
    for k, v in params.items():
        assert m.params[prefix + k].shape == v.shape, prefix + k
        m.params[prefix + k][...] = v


def check_grads(g: rnnlang.api.Gradients, prefix: str, expected: dict[str, list[np.ndarray]],
                ) -> None:
    for k, refs in expected.items():
        for ref in refs:
            np.testing.assert_allclose(g.params[prefix + k], ref, **TIGHT, err_msg=prefix + k)


def run_torch(mod: Any, x: np.ndarray, lengths: list[int], init: Any, cot: np.ndarray,
              head: Any = None) -> tuple[np.ndarray, Any, Any]:
    """Packed forward, zero-padded output, loss <cot, out>, backward. Returns (out, x, init)."""
    xt = torch.tensor(x, requires_grad=True)
    init_t = tuple(torch.tensor(a, requires_grad=True) for a in init)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out_p, _ = mod(packed, init_t if len(init_t) > 1 else init_t[0])
    out, _ = pad_packed_sequence(out_p, total_length=x.shape[0])
    if head is not None:
        out = head(out)
    (out * torch.tensor(cot)).sum().backward()
    return np_(out), xt, init_t


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_single_layer(compiled: Compiler, kind: str) -> None:
    m = compiled(cell_model(f"{kind}(H)"), H=H, O=NO, F=F)
    cls = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    kw = {"nonlinearity": "tanh"} if kind == "elman" else {}
    mod = cls(F, H, **kw).double()
    set_params(m, "enc.", weight_map(kind, mod, "_l0"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, F))
    states = ["s"] if kind == "elman" else (["h", "c"] if kind == "lstm" else ["h"])
    init = [0.5 * rng.standard_normal((1, B, H)) for _ in states]
    initial = {f"enc.{s}0": a[0] for s, a in zip(states, init, strict=True)}
    cot = rng.standard_normal((T, B, H))

    out_t, xt, init_t = run_torch(mod, x, LENGTHS, init, cot)
    lengths = np.array(LENGTHS)
    out = m.forward({"x": x}, lengths=lengths, initial=initial)["y"]
    np.testing.assert_allclose(out, out_t, **TIGHT)
    g = m.vjp({"x": x}, {"y": cot}, lengths=lengths, initial=initial)
    check_grads(g, "enc.", grad_map(kind, mod, "_l0"))
    np.testing.assert_allclose(g.inputs["x"], xt.grad.numpy(), **TIGHT)
    for s, a in zip(states, init_t, strict=True):
        np.testing.assert_allclose(g.inputs[f"enc.{s}0"], a.grad.numpy()[0], **TIGHT)


def test_two_layer_lstm_with_linear_head(compiled: Compiler) -> None:
    m = compiled(TAGGER, H=H, O=NO, F=F)
    mod = torch.nn.LSTM(F, H, num_layers=2).double()
    head = torch.nn.Linear(H, NO).double()
    for layer in (0, 1):
        set_params(m, f"enc.{layer}.", weight_map("lstm", mod, f"_l{layer}"))
    set_params(m, "", {"Wy": np_(head.weight).T, "by": np_(head.bias)})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, F))
    init = [0.5 * rng.standard_normal((2, B, H)) for _ in ("h", "c")]
    initial = {f"enc.{k}.{s}0": a[k] for k in (0, 1) for s, a in zip("hc", init, strict=True)}
    cot = rng.standard_normal((T, B, NO))

    out_t, xt, init_t = run_torch(mod, x, LENGTHS, init, cot, head)
    lengths = np.array(LENGTHS)
    # padded steps: PyTorch pads the LSTM output with zeros, then the head adds its bias;
    # rnnlang's layer output is zero there too, so both give `by`
    out = m.forward({"x": x}, lengths=lengths, initial=initial)["y"]
    np.testing.assert_allclose(out, out_t, **TIGHT)
    g = m.vjp({"x": x}, {"y": cot}, lengths=lengths, initial=initial)
    for layer in (0, 1):
        check_grads(g, f"enc.{layer}.", grad_map("lstm", mod, f"_l{layer}"))
        for s, a in zip("hc", init_t, strict=True):
            np.testing.assert_allclose(g.inputs[f"enc.{layer}.{s}0"], a.grad.numpy()[layer],
                                       **TIGHT)
    np.testing.assert_allclose(g.params["Wy"], head.weight.grad.numpy().T, **TIGHT)
    np.testing.assert_allclose(g.params["by"], head.bias.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(g.inputs["x"], xt.grad.numpy(), **TIGHT)


@pytest.mark.parametrize("lengths", [LENGTHS, [T] * B], ids=["packed", "full"])
def test_bidirectional_gru_packed(compiled: Compiler, lengths: list[int]) -> None:
    m = compiled(BIDIR_CONCAT, H=H, F=F)
    mod = torch.nn.GRU(F, H, bidirectional=True).double()
    set_params(m, "enc.fwd.", weight_map("gru", mod, "_l0"))
    set_params(m, "enc.bwd.", weight_map("gru", mod, "_l0_reverse"))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, F))
    init = [0.5 * rng.standard_normal((2, B, H))]
    initial = {"enc.fwd.h0": init[0][0], "enc.bwd.h0": init[0][1]}
    cot = rng.standard_normal((T, B, 2 * H))

    out_t, xt, init_t = run_torch(mod, x, lengths, init, cot)
    lens = np.array(lengths)
    out = m.forward({"x": x}, lengths=lens, initial=initial)["y"]
    np.testing.assert_allclose(out, out_t, **TIGHT)
    g = m.vjp({"x": x}, {"y": cot}, lengths=lens, initial=initial)
    check_grads(g, "enc.fwd.", grad_map("gru", mod, "_l0"))
    check_grads(g, "enc.bwd.", grad_map("gru", mod, "_l0_reverse"))
    np.testing.assert_allclose(g.inputs["x"], xt.grad.numpy(), **TIGHT)
    np.testing.assert_allclose(g.inputs["enc.fwd.h0"], init_t[0].grad.numpy()[0], **TIGHT)
    np.testing.assert_allclose(g.inputs["enc.bwd.h0"], init_t[0].grad.numpy()[1], **TIGHT)
