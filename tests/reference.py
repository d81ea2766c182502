"""Independent pure-NumPy reference implementation of RNN cells (test oracle).

Written plainly for readability, not speed.  Nothing here imports ``rnnlang``.

Conventions
-----------
* Sequences have shape ``(T, B, F)``; row vectors, so one step is ``x_t @ W``
  with ``W`` of shape ``(in, out)``.
* ``lengths`` is an optional int array ``(B,)`` with ``1 <= L_b <= T``
  (``None`` means every sequence has length ``T``).  For ``t >= L_b`` the
  recurrent state is frozen (``state_t = state_{t-1}``) and the emitted output
  is zero, so the final state of sequence ``b`` is its state at step ``L_b - 1``.
* States are dicts ``{name: (B, n) array}``; missing initial states are zeros.
  State names: elman/indrnn/gru/mgu ``h``; jordan ``y``; lstm and
  peephole_lstm ``h`` and ``c``.
* Every ``*_seq`` function returns ``(outputs (T, B, n), final_states dict)``.
* Manual BPTT functions return ``{param_name: grad, ..., "xs": grad,
  "init": {state_name: grad}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray
Params = Mapping[str, Array]
States = dict[str, Array]
StepFn = Callable[[Params, Array, States], tuple[Array, States]]
SeqFn = Callable[..., tuple[Array, States]]
Lengths = Array | Sequence[int] | None
Init = Mapping[str, Array] | None

# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------


def sigmoid(x: Array) -> Array:
    """Numerically stable logistic function, 1 / (1 + exp(-x))."""
    return np.exp(-np.logaddexp(0.0, -x))


def tanh(x: Array) -> Array:
    """Hyperbolic tangent."""
    return np.tanh(x)


def relu(x: Array) -> Array:
    """max(x, 0)."""
    return np.maximum(x, 0.0)


def identity(x: Array) -> Array:
    """Return ``x`` unchanged."""
    return x


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def _split(z: Array, k: int) -> list[Array]:
    """Split the last axis of ``z`` into ``k`` equal chunks."""
    return np.split(z, k, axis=-1)


def _float_dtype(*arrays: Any) -> np.dtype:
    """Common floating dtype of the given arrays (at least float32)."""
    return np.result_type(np.float32, *[np.asarray(a).dtype for a in arrays])


def check_lengths(lengths: Lengths, T: int, B: int) -> Array:
    """Validate ``lengths`` and return it as an int array (all ``T`` when None)."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lens = np.asarray(lengths)
    if lens.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lens.shape}")
    if not np.issubdtype(lens.dtype, np.integer):
        raise ValueError("lengths must be integers")
    if np.any(lens < 1) or np.any(lens > T):
        raise ValueError(f"lengths must satisfy 1 <= L <= T={T}, got {lens.tolist()}")
    return lens.astype(np.int64)


def step_mask(lengths: Lengths, T: int, B: int) -> Array:
    """Boolean mask ``(T, B)``: True where step ``t`` is valid (``t < L_b``)."""
    lens = check_lengths(lengths, T, B)
    return np.arange(T)[:, None] < lens[None, :]


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: ``step(params, x_t, state) -> (output, new_state)``
    plus ``state_sizes(params) -> {state_name: size}`` for zero initial states."""

    name: str
    step: StepFn
    state_sizes: Callable[[Params], dict[str, int]]

    def __call__(self, params: Params, x: Array, state: States) -> tuple[Array, States]:
        return self.step(params, x, state)


def elman_cell(phi: Callable[[Array], Array] = np.tanh) -> Cell:
    """Elman cell: ``s = phi(x@Wx + s_prev@Ws + b)``; output ``s``."""

    def step(p: Params, x: Array, st: States) -> tuple[Array, States]:
        s = phi(x @ p["Wx"] + st["h"] @ p["Ws"] + p["b"])
        return s, {"h": s}

    return Cell("elman", step, lambda p: {"h": p["Ws"].shape[0]})


def _jordan_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    h = np.tanh(x @ p["Wx"] + st["y"] @ p["Wr"] + p["b"])
    y = sigmoid(h @ p["Wy"] + p["by"])
    return y, {"y": y}


def _lstm_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    zi, zf, zg, zo = _split(x @ p["W"] + st["h"] @ p["U"] + p["b"], 4)
    c = sigmoid(zf) * st["c"] + sigmoid(zi) * np.tanh(zg)
    h = sigmoid(zo) * np.tanh(c)
    return h, {"h": h, "c": c}


def _gru_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    h_prev = st["h"]
    gx_r, gx_z, gx_n = _split(x @ p["W"] + p["bx"], 3)
    gh_r, gh_z, gh_n = _split(h_prev @ p["U"] + p["bh"], 3)
    r = sigmoid(gx_r + gh_r)
    z = sigmoid(gx_z + gh_z)
    n = np.tanh(gx_n + r * gh_n)
    h = (1.0 - z) * n + z * h_prev
    return h, {"h": h}


def _peephole_lstm_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    c_prev = st["c"]
    zi, zf, zg, zo = _split(x @ p["W"] + st["h"] @ p["U"] + p["b"], 4)
    i = sigmoid(zi + p["pi"] * c_prev)
    f = sigmoid(zf + p["pf"] * c_prev)
    c = f * c_prev + i * np.tanh(zg)
    o = sigmoid(zo + p["po"] * c)
    h = o * np.tanh(c)
    return h, {"h": h, "c": c}


def _indrnn_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    h = relu(x @ p["W"] + p["u"] * st["h"] + p["b"])
    return h, {"h": h}


def _mgu_step(p: Params, x: Array, st: States) -> tuple[Array, States]:
    h_prev = st["h"]
    f = sigmoid(x @ p["Wf"] + h_prev @ p["Uf"] + p["bf"])
    hc = np.tanh(x @ p["Wh"] + (f * h_prev) @ p["Uh"] + p["bh"])
    h = (1.0 - f) * h_prev + f * hc
    return h, {"h": h}


ELMAN = elman_cell(np.tanh)
JORDAN = Cell("jordan", _jordan_step, lambda p: {"y": p["Wy"].shape[1]})
LSTM = Cell("lstm", _lstm_step, lambda p: {"h": p["U"].shape[0], "c": p["U"].shape[0]})
GRU = Cell("gru", _gru_step, lambda p: {"h": p["U"].shape[0]})
PEEPHOLE_LSTM = Cell(
    "peephole_lstm", _peephole_lstm_step, lambda p: {"h": p["U"].shape[0], "c": p["U"].shape[0]}
)
INDRNN = Cell("indrnn", _indrnn_step, lambda p: {"h": p["u"].shape[0]})
MGU = Cell("mgu", _mgu_step, lambda p: {"h": p["Uf"].shape[0]})

CELLS: dict[str, Cell] = {c.name: c for c in (ELMAN, JORDAN, LSTM, GRU, PEEPHOLE_LSTM, INDRNN, MGU)}


def random_params(
    kind: str,
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    output_size: int | None = None,
    scale: float = 0.5,
    dtype: Any = np.float64,
) -> dict[str, Array]:
    """Random parameters for cell ``kind`` (``output_size`` is jordan's O)."""
    n_in, H = input_size, hidden_size
    n_out = H if output_size is None else output_size
    shapes: dict[str, dict[str, tuple[int, ...]]] = {
        "elman": {"Wx": (n_in, H), "Ws": (H, H), "b": (H,)},
        "jordan": {"Wx": (n_in, H), "Wr": (n_out, H), "b": (H,), "Wy": (H, n_out), "by": (n_out,)},
        "lstm": {"W": (n_in, 4 * H), "U": (H, 4 * H), "b": (4 * H,)},
        "gru": {"W": (n_in, 3 * H), "U": (H, 3 * H), "bx": (3 * H,), "bh": (3 * H,)},
        "peephole_lstm": {
            "W": (n_in, 4 * H),
            "U": (H, 4 * H),
            "b": (4 * H,),
            "pi": (H,),
            "pf": (H,),
            "po": (H,),
        },
        "indrnn": {"W": (n_in, H), "u": (H,), "b": (H,)},
        "mgu": {
            "Wf": (n_in, H),
            "Uf": (H, H),
            "bf": (H,),
            "Wh": (n_in, H),
            "Uh": (H, H),
            "bh": (H,),
        },
    }
    if kind not in shapes:
        raise ValueError(f"unknown cell kind {kind!r}")
    return {
        name: (scale * rng.standard_normal(shape)).astype(dtype)
        for name, shape in shapes[kind].items()
    }


# --------------------------------------------------------------------------
# Generic runner
# --------------------------------------------------------------------------


def zero_states(cell: Cell, params: Params, batch: int, dtype: Any = np.float64) -> States:
    """Zero initial states ``{name: (B, n)}`` for ``cell``."""
    return {k: np.zeros((batch, n), dtype=dtype) for k, n in cell.state_sizes(params).items()}


def run_cell(
    step_fn: StepFn | Cell,
    params: Params,
    xs: Array,
    lengths: Lengths = None,
    init: Init = None,
) -> tuple[Array, States]:
    """Run ``step_fn`` over ``xs`` (T, B, F) with the masking rules.

    Returns ``(outputs (T, B, n), final_states)``.  Outputs at padded steps are
    zero and states are frozen there.  If ``step_fn`` is a :class:`Cell`,
    missing initial states are zeros; a plain callable needs a full ``init``.
    """
    xs = np.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (T, B, F), got {xs.shape}")
    T, B, _ = xs.shape
    mask = step_mask(lengths, T, B)
    dtype = _float_dtype(xs, *params.values())

    state: States = {}
    if isinstance(step_fn, Cell):
        state = zero_states(step_fn, params, B, dtype)
    if init is not None:
        state.update({k: np.asarray(v) for k, v in init.items()})
    if not state:
        raise ValueError("init is required when step_fn is not a Cell")

    outputs: list[Array] = []
    for t in range(T):
        m = mask[t][:, None]
        out, new_state = step_fn(params, xs[t], state)
        state = {k: np.where(m, new_state[k], state[k]) for k in state}
        outputs.append(np.where(m, out, 0.0))
    return np.stack(outputs).astype(dtype, copy=False), state


# --------------------------------------------------------------------------
# Convenience wrappers: f(params, xs, lengths=None, init=None) -> (ys, final)
# --------------------------------------------------------------------------


def elman_seq(
    params: Params,
    xs: Array,
    lengths: Lengths = None,
    init: Init = None,
    phi: Callable[[Array], Array] = np.tanh,
) -> tuple[Array, States]:
    """Elman RNN over a sequence; state/output ``h``."""
    cell = ELMAN if phi is np.tanh else elman_cell(phi)
    return run_cell(cell, params, xs, lengths, init)


def jordan_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """Jordan RNN over a sequence; state/output ``y``."""
    return run_cell(JORDAN, params, xs, lengths, init)


def lstm_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """LSTM (PyTorch gate order i, f, g, o); states ``h``, ``c``; output ``h``."""
    return run_cell(LSTM, params, xs, lengths, init)


def gru_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """GRU (PyTorch formulas, gate order r, z, n); state/output ``h``."""
    return run_cell(GRU, params, xs, lengths, init)


def peephole_lstm_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """Peephole LSTM; states ``h``, ``c``; output ``h``."""
    return run_cell(PEEPHOLE_LSTM, params, xs, lengths, init)


def indrnn_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """IndRNN (relu); state/output ``h``."""
    return run_cell(INDRNN, params, xs, lengths, init)


def mgu_seq(
    params: Params, xs: Array, lengths: Lengths = None, init: Init = None
) -> tuple[Array, States]:
    """Minimal gated unit; state/output ``h``."""
    return run_cell(MGU, params, xs, lengths, init)


# --------------------------------------------------------------------------
# Wiring helpers
# --------------------------------------------------------------------------


def reverse_padded(x: Array, lengths: Lengths = None) -> Array:
    """Reverse each sequence within its length; padding stays zero.

    ``out[t, b] = x[L_b - 1 - t, b]`` for ``t < L_b``, else 0.  Self-inverse on
    arrays whose padded steps are zero.
    """
    x = np.asarray(x)
    T, B = x.shape[:2]
    lens = check_lengths(lengths, T, B)
    out = np.zeros_like(x)
    for b in range(B):
        L = int(lens[b])
        out[:L, b] = x[L - 1 :: -1, b]
    return out


def stack_seq(
    cell_seq_fn: SeqFn,
    layer_params: Sequence[Params],
    xs: Array,
    lengths: Lengths = None,
    inits: Sequence[Init] | None = None,
) -> tuple[Array, list[States]]:
    """Stacked RNN: layer k's output sequence is layer k+1's input.

    Returns ``(last layer outputs, [final states of each layer])``.
    """
    finals: list[States] = []
    ys = np.asarray(xs)
    for k, p in enumerate(layer_params):
        init = None if inits is None else inits[k]
        ys, fin = cell_seq_fn(p, ys, lengths, init)
        finals.append(fin)
    return ys, finals


def bidirectional_seq(
    cell_fn: SeqFn,
    p_fwd: Params,
    p_bwd: Params,
    xs: Array,
    lengths: Lengths = None,
    merge: str = "concat",
    init_fwd: Init = None,
    init_bwd: Init = None,
) -> tuple[Array, tuple[States, States]]:
    """Bidirectional RNN.

    The backward direction runs on ``reverse_padded(xs, lengths)``; its outputs
    are reversed back the same way, then merged with the forward outputs by
    ``"concat"`` (last axis, forward first) or ``"sum"``.  Returns
    ``(merged outputs, (forward final states, backward final states))``.
    """
    ys_f, fin_f = cell_fn(p_fwd, xs, lengths, init_fwd)
    ys_r, fin_b = cell_fn(p_bwd, reverse_padded(xs, lengths), lengths, init_bwd)
    ys_b = reverse_padded(ys_r, lengths)
    if merge == "concat":
        ys = np.concatenate([ys_f, ys_b], axis=-1)
    elif merge == "sum":
        ys = ys_f + ys_b
    else:
        raise ValueError(f"merge must be 'concat' or 'sum', got {merge!r}")
    return ys, (fin_f, fin_b)


def encoder_decoder(
    enc_fn: SeqFn,
    enc_params: Params,
    dec_fn: SeqFn,
    dec_params: Params,
    xs: Array,
    dec_xs: Array,
    enc_lengths: Lengths = None,
    dec_lengths: Lengths = None,
    init: Init = None,
    bridge: Callable[[States], Mapping[str, Array]] | None = None,
) -> tuple[Array, States]:
    """Encoder-decoder: the encoder's final states are the decoder's initial states.

    ``bridge`` optionally maps encoder final states to decoder initial states
    (default: passed through unchanged, so state names must match).  Returns
    ``(decoder outputs, decoder final states)``.
    """
    _, enc_final = enc_fn(enc_params, xs, enc_lengths, init)
    dec_init = enc_final if bridge is None else bridge(enc_final)
    return dec_fn(dec_params, dec_xs, dec_lengths, dec_init)


def dense(
    x: Array,
    W: Array,
    b: Array | None = None,
    phi: Callable[[Array], Array] | None = None,
    lengths: Lengths = None,
) -> Array:
    """Per-step affine layer ``phi(x @ W + b)`` on ``(..., in)`` arrays.

    If ``lengths`` is given (``x`` of shape (T, B, in)), padded steps are zeroed.
    """
    y = np.asarray(x) @ W
    if b is not None:
        y = y + b
    if phi is not None:
        y = phi(y)
    if lengths is not None:
        T, B = y.shape[:2]
        y = np.where(step_mask(lengths, T, B)[:, :, None], y, 0.0)
    return y


def conv1d(x: Array, W: Array, b: Array | None = None, stride: int = 1, padding: int = 0) -> Array:
    """1-D convolution over time (cross-correlation, as in deep learning).

    ``x`` (T, B, Cin), ``W`` (K, Cin, Cout), ``b`` (Cout).  Zero padding on both
    ends; ``T' = (T + 2*padding - K) // stride + 1``;
    ``out[t'] = sum_k xpad[t'*stride + k] @ W[k] + b``.
    """
    x = np.asarray(x)
    T, B, Cin = x.shape
    K, Cin_w, Cout = W.shape
    if Cin_w != Cin:
        raise ValueError(f"channel mismatch: x has {Cin}, W has {Cin_w}")
    if stride < 1 or padding < 0:
        raise ValueError("stride must be >= 1 and padding >= 0")
    T_out = (T + 2 * padding - K) // stride + 1
    if T_out < 1:
        raise ValueError("convolution output would be empty")
    xpad = np.zeros((T + 2 * padding, B, Cin), dtype=_float_dtype(x, W))
    xpad[padding : padding + T] = x
    out = np.zeros((T_out, B, Cout), dtype=xpad.dtype)
    for t in range(T_out):
        for k in range(K):
            out[t] += xpad[t * stride + k] @ W[k]
        if b is not None:
            out[t] += b
    return out


def last_step(ys: Array, lengths: Lengths = None) -> Array:
    """``ys[L_b - 1, b]`` for each ``b``; shape (B, n)."""
    T, B = ys.shape[:2]
    lens = check_lengths(lengths, T, B)
    return ys[lens - 1, np.arange(B)]


def mean_pool(ys: Array, lengths: Lengths = None) -> Array:
    """Mean of ``ys`` over the valid steps of each sequence; shape (B, n)."""
    T, B = ys.shape[:2]
    lens = check_lengths(lengths, T, B)
    mask = step_mask(lens, T, B)[:, :, None]
    return np.where(mask, ys, 0.0).sum(axis=0) / lens[:, None]


# --------------------------------------------------------------------------
# Manual BPTT (hand-written backward passes)
# --------------------------------------------------------------------------
#
# Forward with masking, per step (m = 1 if t < L_b else 0):
#     new_t   = cell(x_t, state_{t-1})
#     state_t = m * new_t + (1 - m) * state_{t-1}
#     y_t     = m * new_t.h
# so, going backward with ds = dL/dstate_t (from later steps and dfinal):
#     ds     += m * dY_t               (output cotangent)
#     dnew    = m * ds                 (flows into the cell)
#     ds_prev = (1 - m) * ds + cell_backward(dnew)


def _bptt_setup(
    cell: Cell,
    params: Params,
    xs: Array,
    dY: Array,
    lengths: Lengths,
    init: Init,
    dfinal: Init,
) -> tuple[Array, Array, States, States]:
    """Common argument handling: returns (xs, mask (T,B,1), init, d_state)."""
    xs = np.asarray(xs)
    T, B, _ = xs.shape
    mask = step_mask(lengths, T, B)[:, :, None].astype(_float_dtype(xs, *params.values()))
    if dY.shape[:2] != (T, B):
        raise ValueError(f"dY must have shape ({T}, {B}, n), got {dY.shape}")
    state0 = zero_states(cell, params, B, mask.dtype)
    if init is not None:
        state0.update({k: np.asarray(v) for k, v in init.items()})
    dstate = {k: np.zeros_like(v) for k, v in state0.items()}
    if dfinal is not None:
        for k, v in dfinal.items():
            dstate[k] = dstate[k] + v
    return xs, mask, state0, dstate


def elman_bptt(
    params: Params,
    xs: Array,
    dY: Array,
    lengths: Lengths = None,
    init: Init = None,
    dfinal: Init = None,
) -> dict[str, Any]:
    """Gradients of ``sum(dY * ys) + sum(dfinal[k] * final[k])`` for the tanh Elman RNN.

    Returns ``{"Wx", "Ws", "b", "xs", "init": {"h"}}``.
    """
    Wx, Ws = params["Wx"], params["Ws"]
    xs, mask, state0, dstate = _bptt_setup(ELMAN, params, xs, dY, lengths, init, dfinal)
    T = xs.shape[0]

    # Forward, keeping the previous state and the (unmasked) new state per step.
    h_prevs, h_news = [], []
    h = state0["h"]
    for t in range(T):
        h_new = np.tanh(xs[t] @ Wx + h @ Ws + params["b"])
        h_prevs.append(h)
        h_news.append(h_new)
        h = mask[t] * h_new + (1.0 - mask[t]) * h

    dWx, dWs, db = np.zeros_like(Wx), np.zeros_like(Ws), np.zeros_like(params["b"])
    dxs = np.zeros_like(xs, dtype=mask.dtype)
    dh = dstate["h"]
    for t in reversed(range(T)):
        m = mask[t]
        dh = dh + m * dY[t]
        dnew = m * dh
        da = dnew * (1.0 - h_news[t] ** 2)
        dWx += xs[t].T @ da
        dWs += h_prevs[t].T @ da
        db += da.sum(axis=0)
        dxs[t] = da @ Wx.T
        dh = (1.0 - m) * dh + da @ Ws.T
    return {"Wx": dWx, "Ws": dWs, "b": db, "xs": dxs, "init": {"h": dh}}


def lstm_bptt(
    params: Params,
    xs: Array,
    dY: Array,
    lengths: Lengths = None,
    init: Init = None,
    dfinal: Init = None,
) -> dict[str, Any]:
    """Gradients of ``sum(dY * ys) + sum(dfinal[k] * final[k])`` for the LSTM.

    Returns ``{"W", "U", "b", "xs", "init": {"h", "c"}}``.
    """
    W, U = params["W"], params["U"]
    xs, mask, state0, dstate = _bptt_setup(LSTM, params, xs, dY, lengths, init, dfinal)
    T = xs.shape[0]

    cache = []
    h, c = state0["h"], state0["c"]
    for t in range(T):
        zi, zf, zg, zo = _split(xs[t] @ W + h @ U + params["b"], 4)
        i, f, g, o = sigmoid(zi), sigmoid(zf), np.tanh(zg), sigmoid(zo)
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        h_new = o * tc
        cache.append((h, c, i, f, g, o, tc))
        m = mask[t]
        h = m * h_new + (1.0 - m) * h
        c = m * c_new + (1.0 - m) * c

    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(params["b"])
    dxs = np.zeros_like(xs, dtype=mask.dtype)
    dh, dc = dstate["h"], dstate["c"]
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, tc = cache[t]
        m = mask[t]
        dh = dh + m * dY[t]
        dh_new, dc_new = m * dh, m * dc
        do = dh_new * tc
        dc_full = dc_new + dh_new * o * (1.0 - tc**2)
        df = dc_full * c_prev
        di = dc_full * g
        dg = dc_full * i
        dz = np.concatenate(
            [di * i * (1.0 - i), df * f * (1.0 - f), dg * (1.0 - g**2), do * o * (1.0 - o)],
            axis=-1,
        )
        dW += xs[t].T @ dz
        dU += h_prev.T @ dz
        db += dz.sum(axis=0)
        dxs[t] = dz @ W.T
        dh = (1.0 - m) * dh + dz @ U.T
        dc = (1.0 - m) * dc + dc_full * f
    return {"W": dW, "U": dU, "b": db, "xs": dxs, "init": {"h": dh, "c": dc}}


def gru_bptt(
    params: Params,
    xs: Array,
    dY: Array,
    lengths: Lengths = None,
    init: Init = None,
    dfinal: Init = None,
) -> dict[str, Any]:
    """Gradients of ``sum(dY * ys) + sum(dfinal[k] * final[k])`` for the GRU.

    Returns ``{"W", "U", "bx", "bh", "xs", "init": {"h"}}``.
    """
    W, U = params["W"], params["U"]
    xs, mask, state0, dstate = _bptt_setup(GRU, params, xs, dY, lengths, init, dfinal)
    T = xs.shape[0]

    cache = []
    h = state0["h"]
    for t in range(T):
        gx_r, gx_z, gx_n = _split(xs[t] @ W + params["bx"], 3)
        gh_r, gh_z, gh_n = _split(h @ U + params["bh"], 3)
        r = sigmoid(gx_r + gh_r)
        z = sigmoid(gx_z + gh_z)
        n = np.tanh(gx_n + r * gh_n)
        h_new = (1.0 - z) * n + z * h
        cache.append((h, r, z, n, gh_n))
        h = mask[t] * h_new + (1.0 - mask[t]) * h

    dW, dU = np.zeros_like(W), np.zeros_like(U)
    dbx, dbh = np.zeros_like(params["bx"]), np.zeros_like(params["bh"])
    dxs = np.zeros_like(xs, dtype=mask.dtype)
    dh = dstate["h"]
    for t in reversed(range(T)):
        h_prev, r, z, n, gh_n = cache[t]
        m = mask[t]
        dh = dh + m * dY[t]
        dnew = m * dh
        dn = dnew * (1.0 - z)
        dz = dnew * (h_prev - n)
        dan = dn * (1.0 - n**2)
        dr = dan * gh_n
        dar = dr * r * (1.0 - r)
        daz = dz * z * (1.0 - z)
        dgx = np.concatenate([dar, daz, dan], axis=-1)
        dgh = np.concatenate([dar, daz, dan * r], axis=-1)
        dW += xs[t].T @ dgx
        dU += h_prev.T @ dgh
        dbx += dgx.sum(axis=0)
        dbh += dgh.sum(axis=0)
        dxs[t] = dgx @ W.T
        dh = (1.0 - m) * dh + dgh @ U.T + dnew * z
    return {"W": dW, "U": dU, "bx": dbx, "bh": dbh, "xs": dxs, "init": {"h": dh}}


# --------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------


def numeric_grad(f: Callable[[Array], float], array: Array, eps: float = 1e-6) -> Array:
    """Central finite-difference gradient of scalar ``f`` with respect to ``array``.

    ``array`` is perturbed IN PLACE one element at a time (and restored), and
    ``f(array)`` is called each time, so ``f`` may either use its argument or
    close over ``array``.  Use a writable float64 array.
    """
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError("numeric_grad needs a floating-point array")
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = array.reshape(-1)  # a view for contiguous arrays
    if not np.shares_memory(flat, array):
        raise ValueError("numeric_grad needs a contiguous array")
    gflat = grad.reshape(-1)
    for idx in range(flat.size):
        orig = flat[idx]
        flat[idx] = orig + eps
        f_plus = float(f(array))
        flat[idx] = orig - eps
        f_minus = float(f(array))
        flat[idx] = orig
        gflat[idx] = (f_plus - f_minus) / (2.0 * eps)
    return grad
