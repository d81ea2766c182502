"""Checks of the pure-NumPy reference implementation used as the test oracle."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    from tests import reference as ref
except ImportError:  # tests/ not importable as a package: load it from its folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import reference as ref  # type: ignore[no-redef]

ALL_KINDS = ["elman", "jordan", "lstm", "gru", "peephole_lstm", "indrnn", "mgu"]
SEQ_FNS: dict[str, Callable[..., Any]] = {
    "elman": ref.elman_seq,
    "jordan": ref.jordan_seq,
    "lstm": ref.lstm_seq,
    "gru": ref.gru_seq,
    "peephole_lstm": ref.peephole_lstm_seq,
    "indrnn": ref.indrnn_seq,
    "mgu": ref.mgu_seq,
}
BPTT_FNS: dict[str, Callable[..., dict[str, Any]]] = {
    "elman": ref.elman_bptt,
    "lstm": ref.lstm_bptt,
    "gru": ref.gru_bptt,
}


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_init(
    kind: str, params: dict[str, np.ndarray], B: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    sizes = ref.CELLS[kind].state_sizes(params)
    return {k: 0.5 * rng.standard_normal((B, n)) for k, n in sizes.items()}


# --------------------------------------------------------------------------
# Activations and finite differences
# --------------------------------------------------------------------------


def test_sigmoid_is_stable_and_correct() -> None:
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ref.sigmoid(x)
    np.testing.assert_allclose(s[1:-1], 1.0 / (1.0 + np.exp(-x[1:-1])), rtol=1e-14)
    assert s[0] == 0.0 and s[-1] == 1.0


def test_numeric_grad_on_known_function() -> None:
    rng = _rng(1)
    A = rng.standard_normal((3, 4))
    x = rng.standard_normal((4, 2))
    g = ref.numeric_grad(lambda a: float(np.sum(np.sin(A @ a))), x)
    np.testing.assert_allclose(g, A.T @ np.cos(A @ x), rtol=1e-7, atol=1e-9)
    # the array is restored afterwards
    g2 = ref.numeric_grad(lambda a: float(np.sum(np.sin(A @ a))), x)
    np.testing.assert_array_equal(g, g2)


# --------------------------------------------------------------------------
# Manual BPTT against finite differences (float64)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BPTT_FNS))
@pytest.mark.parametrize(
    ("T", "lengths"), [(1, [1, 1]), (7, [7, 4]), (7, None)], ids=["T1", "T7-len74", "T7-full"]
)
def test_bptt_matches_finite_differences(kind: str, T: int, lengths: list[int] | None) -> None:
    rng = _rng(2)
    B, n_in, H = 2, 3, 3
    params = ref.random_params(kind, n_in, H, rng)
    xs = rng.standard_normal((T, B, n_in))
    init = _random_init(kind, params, B, rng)
    dY = rng.standard_normal((T, B, H))
    dfinal = {k: rng.standard_normal(v.shape) for k, v in init.items()}
    seq_fn = SEQ_FNS[kind]

    def loss() -> float:
        ys, final = seq_fn(params, xs, lengths, init)
        total = np.sum(dY * ys)
        for k, v in final.items():
            total += np.sum(dfinal[k] * v)
        return float(total)

    grads = BPTT_FNS[kind](params, xs, dY, lengths=lengths, init=init, dfinal=dfinal)

    assert set(grads) == set(params) | {"xs", "init"}
    for name, arr in params.items():
        num = ref.numeric_grad(lambda _a: loss(), arr)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-8, err_msg=name)
    num = ref.numeric_grad(lambda _a: loss(), xs)
    np.testing.assert_allclose(grads["xs"], num, rtol=1e-6, atol=1e-8, err_msg="xs")
    assert set(grads["init"]) == set(init)
    for k, arr in init.items():
        num = ref.numeric_grad(lambda _a: loss(), arr)
        np.testing.assert_allclose(grads["init"][k], num, rtol=1e-6, atol=1e-8, err_msg=k)
    if lengths is not None:
        # padded inputs get no gradient
        mask = ref.step_mask(lengths, T, B)
        assert np.all(grads["xs"][~mask] == 0.0)


@pytest.mark.parametrize("kind", sorted(BPTT_FNS))
def test_bptt_defaults_zero_init_and_no_final_cotangent(kind: str) -> None:
    rng = _rng(3)
    T, B, n_in, H = 4, 2, 2, 3
    params = ref.random_params(kind, n_in, H, rng)
    xs = rng.standard_normal((T, B, n_in))
    dY = rng.standard_normal((T, B, H))
    zeros = {k: np.zeros((B, n)) for k, n in ref.CELLS[kind].state_sizes(params).items()}
    g1 = BPTT_FNS[kind](params, xs, dY, lengths=[4, 2])
    g2 = BPTT_FNS[kind](params, xs, dY, lengths=[4, 2], init=zeros, dfinal=zeros)
    for name in params:
        np.testing.assert_array_equal(g1[name], g2[name])
    np.testing.assert_array_equal(g1["xs"], g2["xs"])


# --------------------------------------------------------------------------
# Masking rules
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_masking_rules(kind: str) -> None:
    rng = _rng(4)
    T, B, n_in, H = 5, 3, 2, 4
    lengths = np.array([5, 2, 3])
    params = ref.random_params(kind, n_in, H, rng, output_size=3)
    xs = rng.standard_normal((T, B, n_in))
    init = _random_init(kind, params, B, rng)
    seq_fn = SEQ_FNS[kind]

    ys, final = seq_fn(params, xs, lengths, init)
    mask = ref.step_mask(lengths, T, B)
    assert ys.shape[:2] == (T, B)
    # padded outputs are exactly zero
    assert np.all(ys[~mask] == 0.0)
    # garbage in the padding changes nothing
    xs_garbage = np.where(mask[:, :, None], xs, 1e3)
    ys_g, final_g = seq_fn(params, xs_garbage, lengths, init)
    np.testing.assert_array_equal(ys, ys_g)
    for k in final:
        np.testing.assert_array_equal(final[k], final_g[k])
    # each sequence agrees with an unpadded run over its own L_b steps
    for b, L in enumerate(lengths):
        init_b = {k: v[b : b + 1] for k, v in init.items()}
        ys_b, final_b = seq_fn(params, xs[:L, b : b + 1], None, init_b)
        np.testing.assert_allclose(ys[:L, b], ys_b[:, 0], rtol=1e-13, atol=1e-15)
        for k in final:
            np.testing.assert_allclose(final[k][b], final_b[k][0], rtol=1e-13, atol=1e-15)
    # final state = state at step L_b - 1 (the output there is that state)
    state_name = "y" if kind == "jordan" else "h"
    np.testing.assert_array_equal(final[state_name], ref.last_step(ys, lengths))


def test_run_cell_default_init_is_zero_and_plain_step_needs_init() -> None:
    rng = _rng(5)
    params = ref.random_params("lstm", 2, 3, rng)
    xs = rng.standard_normal((3, 2, 2))
    ys1, f1 = ref.lstm_seq(params, xs)
    zeros = {"h": np.zeros((2, 3)), "c": np.zeros((2, 3))}
    ys2, f2 = ref.run_cell(ref.LSTM.step, params, xs, None, zeros)
    np.testing.assert_array_equal(ys1, ys2)
    np.testing.assert_array_equal(f1["c"], f2["c"])
    with pytest.raises(ValueError):
        ref.run_cell(ref.LSTM.step, params, xs)


@pytest.mark.parametrize("bad", [[0, 2], [4, 1], [1, 1, 1]])
def test_bad_lengths_rejected(bad: list[int]) -> None:
    params = ref.random_params("elman", 2, 3, _rng())
    with pytest.raises(ValueError):
        ref.elman_seq(params, np.zeros((3, 2, 2)), bad)


def test_cells_match_hand_computed_single_step() -> None:
    rng = _rng(6)
    B, n_in, H = 2, 3, 2
    x = rng.standard_normal((1, B, n_in))
    sig = ref.sigmoid
    for kind in ALL_KINDS:
        p = ref.random_params(kind, n_in, H, rng)
        init = _random_init(kind, p, B, rng)
        ys, fin = SEQ_FNS[kind](p, x, None, init)
        x0 = x[0]
        if kind == "elman":
            want = np.tanh(x0 @ p["Wx"] + init["h"] @ p["Ws"] + p["b"])
        elif kind == "jordan":
            h = np.tanh(x0 @ p["Wx"] + init["y"] @ p["Wr"] + p["b"])
            want = sig(h @ p["Wy"] + p["by"])
        elif kind in ("lstm", "peephole_lstm"):
            z = x0 @ p["W"] + init["h"] @ p["U"] + p["b"]
            zi, zf, zg, zo = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
            c0 = init["c"]
            if kind == "lstm":
                c = sig(zf) * c0 + sig(zi) * np.tanh(zg)
                want = sig(zo) * np.tanh(c)
            else:
                c = sig(zf + p["pf"] * c0) * c0 + sig(zi + p["pi"] * c0) * np.tanh(zg)
                want = sig(zo + p["po"] * c) * np.tanh(c)
            np.testing.assert_allclose(fin["c"], c, rtol=1e-14)
        elif kind == "gru":
            gx, gh = x0 @ p["W"] + p["bx"], init["h"] @ p["U"] + p["bh"]
            r = sig(gx[:, :H] + gh[:, :H])
            z = sig(gx[:, H : 2 * H] + gh[:, H : 2 * H])
            n = np.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
            want = (1 - z) * n + z * init["h"]
        elif kind == "indrnn":
            want = np.maximum(x0 @ p["W"] + p["u"] * init["h"] + p["b"], 0.0)
        else:  # mgu
            f = sig(x0 @ p["Wf"] + init["h"] @ p["Uf"] + p["bf"])
            hc = np.tanh(x0 @ p["Wh"] + (f * init["h"]) @ p["Uh"] + p["bh"])
            want = (1 - f) * init["h"] + f * hc
        np.testing.assert_allclose(ys[0], want, rtol=1e-14, err_msg=kind)


def test_elman_custom_phi() -> None:
    rng = _rng(7)
    p = ref.random_params("elman", 2, 3, rng)
    xs = rng.standard_normal((4, 2, 2))
    ys, _ = ref.elman_seq(p, xs, [4, 3], phi=ref.relu)
    assert np.all(ys >= 0.0)
    h = np.zeros((2, 3))
    for t in range(4):
        h_new = np.maximum(xs[t] @ p["Wx"] + h @ p["Ws"] + p["b"], 0.0)
        h = np.where(np.array([[True], [t < 3]]), h_new, h)
    np.testing.assert_allclose(ref.last_step(ys, [4, 3]), h, rtol=1e-14)


# --------------------------------------------------------------------------
# Wiring helpers
# --------------------------------------------------------------------------


def test_reverse_padded_semantics() -> None:
    T, B = 4, 3
    x = np.arange(T * B, dtype=float).reshape(T, B, 1) + 1.0
    lengths = [4, 2, 1]
    r = ref.reverse_padded(x, lengths)
    for b, L in enumerate(lengths):
        for t in range(T):
            want = x[L - 1 - t, b] if t < L else 0.0
            np.testing.assert_array_equal(r[t, b], want)
    # self-inverse on zero-padded data; full lengths = plain time reversal
    x_padded = np.where(ref.step_mask(lengths, T, B)[:, :, None], x, 0.0)
    np.testing.assert_array_equal(ref.reverse_padded(r, lengths), x_padded)
    np.testing.assert_array_equal(ref.reverse_padded(x), x[::-1])


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_semantics(merge: str) -> None:
    rng = _rng(8)
    T, B, n_in, H = 5, 3, 2, 3
    lengths = [5, 3, 1]
    pf = ref.random_params("gru", n_in, H, rng)
    pb = ref.random_params("gru", n_in, H, rng)
    xs = rng.standard_normal((T, B, n_in))
    ys, (fin_f, fin_b) = ref.bidirectional_seq(ref.gru_seq, pf, pb, xs, lengths, merge)
    assert ys.shape == (T, B, 2 * H if merge == "concat" else H)
    for b, L in enumerate(lengths):
        xb = xs[:L, b : b + 1]
        yf, ff = ref.gru_seq(pf, xb)
        yb_rev, fb = ref.gru_seq(pb, xb[::-1])
        yb = yb_rev[::-1]  # backward output at original time t
        want = np.concatenate([yf, yb], -1) if merge == "concat" else yf + yb
        np.testing.assert_allclose(ys[:L, b], want[:, 0], rtol=1e-13, atol=1e-15)
        assert np.all(ys[L:, b] == 0.0)
        np.testing.assert_allclose(fin_f["h"][b], ff["h"][0], rtol=1e-13)
        # backward final state = backward state after reading x[0]
        np.testing.assert_allclose(fin_b["h"][b], fb["h"][0], rtol=1e-13)
        np.testing.assert_allclose(fin_b["h"][b], yb[0, 0], rtol=1e-13)


def test_stack_and_encoder_decoder() -> None:
    rng = _rng(9)
    T, B, n_in, H = 4, 2, 3, 2
    lengths = [4, 2]
    p1 = ref.random_params("lstm", n_in, H, rng)
    p2 = ref.random_params("lstm", H, H, rng)
    xs = rng.standard_normal((T, B, n_in))
    ys, finals = ref.stack_seq(ref.lstm_seq, [p1, p2], xs, lengths)
    y1, f1 = ref.lstm_seq(p1, xs, lengths)
    y2, f2 = ref.lstm_seq(p2, y1, lengths)
    np.testing.assert_array_equal(ys, y2)
    np.testing.assert_array_equal(finals[0]["c"], f1["c"])
    np.testing.assert_array_equal(finals[1]["h"], f2["h"])

    dec_x = rng.standard_normal((3, B, 2))
    pd = ref.random_params("lstm", 2, H, rng)
    yd, fd = ref.encoder_decoder(ref.lstm_seq, p1, ref.lstm_seq, pd, xs, dec_x, lengths, [3, 1])
    _, fe = ref.lstm_seq(p1, xs, lengths)
    yd2, fd2 = ref.lstm_seq(pd, dec_x, [3, 1], fe)
    np.testing.assert_array_equal(yd, yd2)
    np.testing.assert_array_equal(fd["c"], fd2["c"])


def test_pooling_and_dense() -> None:
    rng = _rng(10)
    T, B, n = 4, 3, 2
    ys = rng.standard_normal((T, B, n))
    lengths = [4, 1, 2]
    np.testing.assert_array_equal(
        ref.last_step(ys, lengths), np.stack([ys[3, 0], ys[0, 1], ys[1, 2]])
    )
    want = np.stack([ys[:4, 0].mean(0), ys[:1, 1].mean(0), ys[:2, 2].mean(0)])
    np.testing.assert_allclose(ref.mean_pool(ys, lengths), want, rtol=1e-14)
    np.testing.assert_array_equal(ref.last_step(ys), ys[-1])

    W, b = rng.standard_normal((n, 5)), rng.standard_normal(5)
    out = ref.dense(ys, W, b, ref.sigmoid)
    for t in range(T):
        np.testing.assert_allclose(out[t], ref.sigmoid(ys[t] @ W + b), rtol=1e-14)
    masked = ref.dense(ys, W, b, ref.sigmoid, lengths=lengths)
    assert np.all(masked[~ref.step_mask(lengths, T, B)] == 0.0)


def _conv1d_via_correlate(x: np.ndarray, W: np.ndarray, b: np.ndarray, stride: int, pad: int):
    T, B, c_in = x.shape
    K, _, c_out = W.shape
    xpad = np.pad(x, ((pad, pad), (0, 0), (0, 0)))
    t_out = (T + 2 * pad - K) // stride + 1
    out = np.zeros((t_out, B, c_out))
    for bb in range(B):
        for co in range(c_out):
            acc = sum(np.correlate(xpad[:, bb, ci], W[:, ci, co], "valid") for ci in range(c_in))
            out[:, bb, co] = acc[::stride][:t_out] + b[co]
    return out


@pytest.mark.parametrize(("K", "stride", "padding"), [(1, 1, 0), (3, 1, 1), (3, 2, 0), (4, 3, 2)])
def test_conv1d_against_correlate(K: int, stride: int, padding: int) -> None:
    rng = _rng(11)
    T, B, c_in, c_out = 9, 2, 3, 4
    x = rng.standard_normal((T, B, c_in))
    W = rng.standard_normal((K, c_in, c_out))
    b = rng.standard_normal(c_out)
    out = ref.conv1d(x, W, b, stride, padding)
    assert out.shape == ((T + 2 * padding - K) // stride + 1, B, c_out)
    np.testing.assert_allclose(out, _conv1d_via_correlate(x, W, b, stride, padding), rtol=1e-12)


def test_conv1d_against_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = _rng(12)
    x = rng.standard_normal((10, 2, 3))
    W = rng.standard_normal((3, 3, 5))
    b = rng.standard_normal(5)
    out = ref.conv1d(x, W, b, stride=2, padding=1)
    tx = torch.from_numpy(x).permute(1, 2, 0)  # (B, Cin, T)
    tw = torch.from_numpy(W).permute(2, 1, 0)  # (Cout, Cin, K)
    want = torch.nn.functional.conv1d(tx, tw, torch.from_numpy(b), stride=2, padding=1)
    np.testing.assert_allclose(out, want.permute(2, 0, 1).numpy(), rtol=1e-12)


# --------------------------------------------------------------------------
# Agreement with PyTorch (float64, packed variable-length sequences)
# --------------------------------------------------------------------------


def _torch_forward(torch: Any, module: Any, xs: np.ndarray, lengths: np.ndarray, h0: Any):
    """Run a torch RNN module on a packed batch; returns (padded outputs, final states)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    packed = pack_padded_sequence(
        torch.from_numpy(xs), torch.from_numpy(lengths), enforce_sorted=False
    )
    with torch.no_grad():
        out, hn = module(packed, h0)
    ys, _ = pad_packed_sequence(out, total_length=xs.shape[0])
    return ys.numpy(), hn


def _np(t: Any) -> np.ndarray:
    return t.detach().numpy()


def test_elman_matches_torch_rnn() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = _rng(13)
    T, B, n_in, H = 6, 3, 4, 5
    lengths = np.array([6, 2, 4])
    m = torch.nn.RNN(n_in, H, nonlinearity="tanh").double()
    p = {
        "Wx": _np(m.weight_ih_l0).T,
        "Ws": _np(m.weight_hh_l0).T,
        "b": _np(m.bias_ih_l0 + m.bias_hh_l0),
    }
    xs = rng.standard_normal((T, B, n_in))
    h0 = rng.standard_normal((B, H))
    ys_t, hn = _torch_forward(torch, m, xs, lengths, torch.from_numpy(h0)[None])
    ys, fin = ref.elman_seq(p, xs, lengths, {"h": h0})
    np.testing.assert_allclose(ys, ys_t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["h"], _np(hn[0]), rtol=1e-12, atol=1e-14)


def test_lstm_matches_torch_lstm() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    rng = _rng(14)
    T, B, n_in, H = 6, 3, 4, 5
    lengths = np.array([3, 6, 1])
    m = torch.nn.LSTM(n_in, H).double()
    p = {
        "W": _np(m.weight_ih_l0).T,
        "U": _np(m.weight_hh_l0).T,
        "b": _np(m.bias_ih_l0 + m.bias_hh_l0),
    }
    xs = rng.standard_normal((T, B, n_in))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    ys_t, (hn, cn) = _torch_forward(
        torch, m, xs, lengths, (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None])
    )
    ys, fin = ref.lstm_seq(p, xs, lengths, {"h": h0, "c": c0})
    np.testing.assert_allclose(ys, ys_t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["h"], _np(hn[0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["c"], _np(cn[0]), rtol=1e-12, atol=1e-14)


def test_gru_matches_torch_gru() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    rng = _rng(15)
    T, B, n_in, H = 6, 3, 4, 5
    lengths = np.array([6, 5, 2])
    m = torch.nn.GRU(n_in, H).double()
    p = {
        "W": _np(m.weight_ih_l0).T,
        "U": _np(m.weight_hh_l0).T,
        "bx": _np(m.bias_ih_l0),
        "bh": _np(m.bias_hh_l0),
    }
    xs = rng.standard_normal((T, B, n_in))
    h0 = rng.standard_normal((B, H))
    ys_t, hn = _torch_forward(torch, m, xs, lengths, torch.from_numpy(h0)[None])
    ys, fin = ref.gru_seq(p, xs, lengths, {"h": h0})
    np.testing.assert_allclose(ys, ys_t, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fin["h"], _np(hn[0]), rtol=1e-12, atol=1e-14)


def test_stacked_bidirectional_gru_matches_torch() -> None:
    """Two-layer bidirectional GRU: checks stack_seq + bidirectional_seq wiring."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(3)
    rng = _rng(16)
    T, B, n_in, H = 5, 3, 2, 3
    lengths = np.array([5, 2, 4])
    m = torch.nn.GRU(n_in, H, num_layers=2, bidirectional=True).double()

    def params(layer: int, suffix: str) -> dict[str, np.ndarray]:
        g = lambda name: _np(getattr(m, f"{name}_l{layer}{suffix}"))  # noqa: E731
        return {
            "W": g("weight_ih").T,
            "U": g("weight_hh").T,
            "bx": g("bias_ih"),
            "bh": g("bias_hh"),
        }

    def bigru(p: tuple[dict, dict], xs: np.ndarray, lens: Any, init: Any = None):
        ys, (ff, fb) = ref.bidirectional_seq(ref.gru_seq, p[0], p[1], xs, lens)
        return ys, {"fwd": ff["h"], "bwd": fb["h"]}

    layers = [(params(k, ""), params(k, "_reverse")) for k in range(2)]
    xs = rng.standard_normal((T, B, n_in))
    ys, finals = ref.stack_seq(bigru, layers, xs, lengths)
    ys_t, hn = _torch_forward(torch, m, xs, lengths, None)
    np.testing.assert_allclose(ys, ys_t, rtol=1e-12, atol=1e-14)
    hn = _np(hn)  # (layers * directions, B, H)
    for k in range(2):
        np.testing.assert_allclose(finals[k]["fwd"], hn[2 * k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(finals[k]["bwd"], hn[2 * k + 1], rtol=1e-12, atol=1e-14)
