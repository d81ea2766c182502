"""CPU benchmark: rnnlang's generated code against baselines measured in the same run.

Runs ``model m(H, F) { input x: seq[F]  h = <cell>(H) over x  output y = h }`` (F = H) for the
standard-library cells lstm, gru, elman and mgu and the coupled-gate LSTM ``cifg`` (written in the
benchmark's source), in two modes (``fwd``: inference; ``fwdbwd``:
forward plus the gradient of ``sum(y * cot)`` for a fixed random cotangent ``cot`` with respect to
every parameter, the input and the initial state), against whichever baselines are installed:

* ``numpy-loop``: a NumPy time loop written carefully (input projection hoisted into one matmul
  before the loop, no per-step weight slicing) with a hand-written BPTT for ``fwdbwd``;
* ``torch-native``: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (no native MGU);
* ``torch-loop``: the same cell as an eager PyTorch loop of torch ops (input projection hoisted);
* ``torch-script``: that loop under ``torch.jit.script``;
* ``torch-compile``: that loop under ``torch.compile`` (a case whose compile takes over
  ``--compile-limit`` seconds, 180 by default, is skipped and says so);
* ``jax-scan``: the cell as ``lax.scan`` under ``jax.jit`` (only if JAX is installed).

Every figure is the median over interleaved repeats after warm-up (the rnnlang warm-up includes
its JIT compile, reported separately); ``ratio = baseline_time / rnnlang_time`` (> 1: rnnlang is
faster). ``floor`` is the time of the matmuls alone at this machine's float32 GEMM speed,
measured in the same run. Every backend's outputs and gradients are checked against rnnlang's
before timing. ``--compile-time`` adds rnnlang's cold and cached compile of a 2-layer LSTM
(bench_startup.py), ``--memory`` the memory of a training step against the BPTT minimum
(bench_memory.py). Run ``python benchmarks/bench_cpu.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling modules bench_jax, bench_memory, bench_startup
    sys.path.insert(0, str(HERE))

import bench_jax  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "XLA_FLAGS")


def _pin_threads_from_argv(argv: Sequence[str]) -> None:
    """Run as a script, every library's thread pool (BLAS and OpenMP included, which can only be
    set before they load) gets ``--threads`` threads (default 2), unless the variable is set."""
    n = "2"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in THREAD_VARS[:-1]:
        os.environ.setdefault(var, n)
    flags = bench_jax.xla_flags(int(n))
    if flags is not None:
        os.environ.setdefault("XLA_FLAGS", flags)


if __name__ == "__main__":
    _pin_threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402
from scipy.special import expit  # noqa: E402

from rnnlang.bench.timing import time_interleaved  # noqa: E402
from rnnlang.parallel import CHOICE_CALLS  # noqa: E402

try:  # optional baselines
    import torch
    from torch import Tensor
except ImportError:  # pragma: no cover - depends on the environment
    torch = None  # type: ignore[assignment]
    Tensor = Any  # type: ignore[assignment,misc]

F32 = np.float32
Arrays = dict[str, np.ndarray]

CASES: dict[str, tuple[int, int, int]] = {
    "small": (50, 1, 64),
    "medium": (100, 32, 128),
    "large": (100, 64, 512),
    "long": (1000, 8, 128),
}
DEFAULT_CASES = ("small", "medium")
CELLS = ("lstm", "gru", "elman", "mgu", "cifg")
GATES = {"lstm": 4, "gru": 3, "elman": 1, "mgu": 2, "cifg": 3}
# Recurrent states by the cell's own names; the model takes them as inputs h.<state>0.
STATES = {"lstm": ("h", "c"), "gru": ("h",), "elman": ("s",), "mgu": ("h",), "cifg": ("h", "c")}
MODES = ("fwd", "fwdbwd")
BASELINES = ("numpy-loop", "torch-native", "torch-loop", "torch-script", "torch-compile",
             "jax-scan")
NATIVE = ("lstm", "gru", "elman")  # cells torch ships (nn.LSTM, nn.GRU, nn.RNN)
BACKENDS = ("rnnlang",) + BASELINES
# Acceptance criteria of the issue: (cell, mode, (T, B, H), baseline, minimum ratio, strict).
ACCEPTANCE = (
    ("mgu", "fwdbwd", (50, 1, 64), "torch-loop", 5.0, False),
    ("mgu", "fwdbwd", (100, 32, 128), "torch-loop", 1.0, True),
)
NOISY = 1.5  # median / min above this: the figure is marked noisy (~) in the table
CHECK_TOL = 2e-3  # max |a - b| / max |b| per array, float32


# The coupled-gate LSTM (CIFG): the input gate is 1 - f, three gate blocks (f, g, o) instead of
# four. No framework ships it fused; it is written here in the language, like a user would.
CIFG_SOURCE = """cell cifg(x[I]) -> h[H] {
  state c[H]
  param W[I, 3*H] = glorot
  param U[H, 3*H] = orthogonal
  param b[3*H]    = zeros
  zf, zg, zo = split(x @ W + h[t-1] @ U + b, 3)
  f = sigmoid(zf)
  c = f * c[t-1] + (1 - f) * tanh(zg)
  h = sigmoid(zo) * tanh(c)
}
"""


def model_source(cell: str) -> str:
    """The benchmarked model: one layer of ``cell`` over the input, its outputs as the output."""
    prelude = CIFG_SOURCE if cell == "cifg" else ""
    return (prelude + f"model m(H, F) {{\n  input x: seq[F]\n  h = {cell}(H) over x\n"
            "  output y = h\n}\n")


# ------------------------------------------------------------------------------------------------
# NumPy baselines: a time loop per cell, input projections hoisted, hand-written BPTT.
# Parameters and gradients use rnnlang's names (h.W, ...); "x", "h.h0", "h.c0" for the inputs.
# ------------------------------------------------------------------------------------------------


def _prev(hs: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """States entering each step, (T*B, H): h0, hs[0], ..., hs[T-2]."""
    T, B, H = hs.shape
    out = np.empty((T, B, H), hs.dtype)
    out[0] = h0
    out[1:] = hs[:-1]
    return out.reshape(T * B, H)


def np_lstm(p: Arrays, x: np.ndarray, s0: Arrays, dy: np.ndarray | None) -> tuple[np.ndarray,
                                                                                 Arrays]:
    W, U, b = p["h.W"], p["h.U"], p["h.b"]
    T, B, F = x.shape
    H = U.shape[0]
    x2 = x.reshape(T * B, F)
    xw = (x2 @ W + b).reshape(T, B, 4 * H)
    train = dy is not None
    ys = np.empty((T, B, H), F32)
    acts = np.empty((T if train else 1, B, 4 * H), F32)
    cs = np.empty((T, B, H), F32) if train else None
    tcs = np.empty((T, B, H), F32) if train else None
    h, c = s0["h"], s0["c"]
    for t in range(T):
        z = h @ U
        z += xw[t]
        a = acts[t if train else 0]
        expit(z[:, :2 * H], out=a[:, :2 * H])
        np.tanh(z[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])
        expit(z[:, 3 * H:], out=a[:, 3 * H:])
        c = a[:, H:2 * H] * c + a[:, :H] * a[:, 2 * H:3 * H]
        tc = np.tanh(c)
        h = a[:, 3 * H:] * tc
        ys[t] = h
        if train:
            cs[t] = c  # type: ignore[index]
            tcs[t] = tc  # type: ignore[index]
    if dy is None:
        return ys, {}
    assert cs is not None and tcs is not None
    UT = np.ascontiguousarray(U.T)
    dz = np.empty((T, B, 4 * H), F32)
    dh = np.zeros((B, H), F32)
    dc = np.zeros((B, H), F32)
    for t in range(T - 1, -1, -1):
        a = acts[t]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        tc = tcs[t]
        cp = cs[t - 1] if t > 0 else s0["c"]
        dh = dh + dy[t]
        d = dz[t]
        d[:, 3 * H:] = dh * tc * o * (1 - o)
        dc = dc + dh * o * (1 - tc * tc)
        d[:, :H] = dc * g * i * (1 - i)
        d[:, H:2 * H] = dc * cp * f * (1 - f)
        d[:, 2 * H:3 * H] = dc * i * (1 - g * g)
        dc = dc * f
        dh = d @ UT
    dz2 = dz.reshape(T * B, 4 * H)
    return ys, {"h.W": x2.T @ dz2, "h.U": _prev(ys, s0["h"]).T @ dz2, "h.b": dz2.sum(0),
                "x": (dz2 @ W.T).reshape(T, B, F), "h.h0": dh, "h.c0": dc}


def np_gru(p: Arrays, x: np.ndarray, s0: Arrays, dy: np.ndarray | None) -> tuple[np.ndarray,
                                                                                Arrays]:
    W, U, bx, bh = p["h.W"], p["h.U"], p["h.bx"], p["h.bh"]
    T, B, F = x.shape
    H = U.shape[0]
    x2 = x.reshape(T * B, F)
    xw = (x2 @ W + bx).reshape(T, B, 3 * H)
    train = dy is not None
    ys = np.empty((T, B, H), F32)
    acts = np.empty((T if train else 1, B, 3 * H), F32)  # r, z, n
    hns = np.empty((T, B, H), F32) if train else None
    h = s0["h"]
    for t in range(T):
        hu = h @ U
        hu += bh
        a = acts[t if train else 0]
        xt = xw[t]
        expit(xt[:, :2 * H] + hu[:, :2 * H], out=a[:, :2 * H])
        hn = hu[:, 2 * H:]
        np.tanh(xt[:, 2 * H:] + a[:, :H] * hn, out=a[:, 2 * H:])
        n = a[:, 2 * H:]
        h = n + a[:, H:2 * H] * (h - n)
        ys[t] = h
        if train:
            hns[t] = hn  # type: ignore[index]
    if dy is None:
        return ys, {}
    assert hns is not None
    UT = np.ascontiguousarray(U.T)
    dX = np.empty((T, B, 3 * H), F32)
    dG = np.empty((T, B, 3 * H), F32)
    dh = np.zeros((B, H), F32)
    for t in range(T - 1, -1, -1):
        a = acts[t]
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        hp = ys[t - 1] if t > 0 else s0["h"]
        dh = dh + dy[t]
        dnp = dh * (1 - z) * (1 - n * n)
        drp = dnp * hns[t] * r * (1 - r)
        dzp = dh * (hp - n) * z * (1 - z)
        dx, dg = dX[t], dG[t]
        dx[:, :H] = drp
        dx[:, H:2 * H] = dzp
        dx[:, 2 * H:] = dnp
        dg[:, :2 * H] = dx[:, :2 * H]
        dg[:, 2 * H:] = dnp * r
        dh = dh * z + dg @ UT
    dX2 = dX.reshape(T * B, 3 * H)
    dG2 = dG.reshape(T * B, 3 * H)
    return ys, {"h.W": x2.T @ dX2, "h.U": _prev(ys, s0["h"]).T @ dG2, "h.bx": dX2.sum(0),
                "h.bh": dG2.sum(0), "x": (dX2 @ W.T).reshape(T, B, F), "h.h0": dh}


def np_elman(p: Arrays, x: np.ndarray, s0: Arrays, dy: np.ndarray | None) -> tuple[np.ndarray,
                                                                                  Arrays]:
    Wx, Ws, b = p["h.Wx"], p["h.Ws"], p["h.b"]
    T, B, F = x.shape
    H = Ws.shape[0]
    x2 = x.reshape(T * B, F)
    xw = (x2 @ Wx + b).reshape(T, B, H)
    ys = np.empty((T, B, H), F32)
    h = s0["s"]
    for t in range(T):
        z = h @ Ws
        z += xw[t]
        h = np.tanh(z, out=ys[t])
    if dy is None:
        return ys, {}
    WsT = np.ascontiguousarray(Ws.T)
    da = np.empty((T, B, H), F32)
    dh = np.zeros((B, H), F32)
    for t in range(T - 1, -1, -1):
        s = ys[t]
        d = da[t]
        np.multiply(dh + dy[t], 1 - s * s, out=d)
        dh = d @ WsT
    da2 = da.reshape(T * B, H)
    return ys, {"h.Wx": x2.T @ da2, "h.Ws": _prev(ys, s0["s"]).T @ da2, "h.b": da2.sum(0),
                "x": (da2 @ Wx.T).reshape(T, B, F), "h.s0": dh}


def np_mgu(p: Arrays, x: np.ndarray, s0: Arrays, dy: np.ndarray | None) -> tuple[np.ndarray,
                                                                                Arrays]:
    Wf, Uf, bf, Wh, Uh, bh = (p["h.Wf"], p["h.Uf"], p["h.bf"], p["h.Wh"], p["h.Uh"], p["h.bh"])
    T, B, F = x.shape
    H = Uf.shape[0]
    x2 = x.reshape(T * B, F)
    xf = (x2 @ Wf + bf).reshape(T, B, H)
    xh = (x2 @ Wh + bh).reshape(T, B, H)
    train = dy is not None
    ys = np.empty((T, B, H), F32)
    fs = np.empty((T if train else 1, B, H), F32)
    fhs = np.empty((T if train else 1, B, H), F32)
    hcs = np.empty((T if train else 1, B, H), F32)
    h = s0["h"]
    for t in range(T):
        k = t if train else 0
        z = h @ Uf
        z += xf[t]
        f = expit(z, out=fs[k])
        fh = np.multiply(f, h, out=fhs[k])
        z = fh @ Uh
        z += xh[t]
        hc = np.tanh(z, out=hcs[k])
        h = h + f * (hc - h)
        ys[t] = h
    if dy is None:
        return ys, {}
    UfT = np.ascontiguousarray(Uf.T)
    UhT = np.ascontiguousarray(Uh.T)
    daf = np.empty((T, B, H), F32)
    dah = np.empty((T, B, H), F32)
    dh = np.zeros((B, H), F32)
    for t in range(T - 1, -1, -1):
        f, hc = fs[t], hcs[t]
        hp = ys[t - 1] if t > 0 else s0["h"]
        dh = dh + dy[t]
        np.multiply(dh * f, 1 - hc * hc, out=dah[t])
        dfh = dah[t] @ UhT
        df = dh * (hc - hp) + dfh * hp
        np.multiply(df, f * (1 - f), out=daf[t])
        dh = dh * (1 - f) + dfh * f + daf[t] @ UfT
    daf2 = daf.reshape(T * B, H)
    dah2 = dah.reshape(T * B, H)
    hprev = _prev(ys, s0["h"])
    return ys, {"h.Wf": x2.T @ daf2, "h.Uf": hprev.T @ daf2, "h.bf": daf2.sum(0),
                "h.Wh": x2.T @ dah2, "h.Uh": fhs.reshape(T * B, H).T @ dah2,
                "h.bh": dah2.sum(0), "x": (daf2 @ Wf.T + dah2 @ Wh.T).reshape(T, B, F),
                "h.h0": dh}


def np_cifg(p: Arrays, x: np.ndarray, s0: Arrays, dy: np.ndarray | None) -> tuple[np.ndarray,
                                                                                 Arrays]:
    """Coupled-gate LSTM: f, g, o = sigmoid, tanh, sigmoid of x W + h U + b; c = f c + (1-f) g."""
    W, U, b = p["h.W"], p["h.U"], p["h.b"]
    T, B, F = x.shape
    H = U.shape[0]
    x2 = x.reshape(T * B, F)
    xw = (x2 @ W + b).reshape(T, B, 3 * H)
    train = dy is not None
    ys = np.empty((T, B, H), F32)
    acts = np.empty((T if train else 1, B, 3 * H), F32)  # f, g, o
    cs = np.empty((T, B, H), F32) if train else None
    tcs = np.empty((T, B, H), F32) if train else None
    h, c = s0["h"], s0["c"]
    for t in range(T):
        z = h @ U
        z += xw[t]
        a = acts[t if train else 0]
        expit(z[:, :H], out=a[:, :H])
        np.tanh(z[:, H:2 * H], out=a[:, H:2 * H])
        expit(z[:, 2 * H:], out=a[:, 2 * H:])
        f, g = a[:, :H], a[:, H:2 * H]
        c = g + f * (c - g)
        tc = np.tanh(c)
        h = a[:, 2 * H:] * tc
        ys[t] = h
        if train:
            cs[t] = c  # type: ignore[index]
            tcs[t] = tc  # type: ignore[index]
    if dy is None:
        return ys, {}
    assert cs is not None and tcs is not None
    UT = np.ascontiguousarray(U.T)
    dz = np.empty((T, B, 3 * H), F32)
    dh = np.zeros((B, H), F32)
    dc = np.zeros((B, H), F32)
    for t in range(T - 1, -1, -1):
        a = acts[t]
        f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        tc = tcs[t]
        cp = cs[t - 1] if t > 0 else s0["c"]
        dh = dh + dy[t]
        d = dz[t]
        d[:, 2 * H:] = dh * tc * o * (1 - o)
        dc = dc + dh * o * (1 - tc * tc)
        d[:, :H] = dc * (cp - g) * f * (1 - f)
        d[:, H:2 * H] = dc * (1 - f) * (1 - g * g)
        dc = dc * f
        dh = d @ UT
    dz2 = dz.reshape(T * B, 3 * H)
    return ys, {"h.W": x2.T @ dz2, "h.U": _prev(ys, s0["h"]).T @ dz2, "h.b": dz2.sum(0),
                "x": (dz2 @ W.T).reshape(T, B, F), "h.h0": dh, "h.c0": dc}


NUMPY_CELLS: dict[str, Callable[..., tuple[np.ndarray, Arrays]]] = {
    "lstm": np_lstm, "gru": np_gru, "elman": np_elman, "mgu": np_mgu, "cifg": np_cifg}


# ------------------------------------------------------------------------------------------------
# PyTorch loops (also compiled with torch.jit.script). Weights in the row-vector convention
# (x @ W, W is [in, out]) so no transposes or weight slicing happen inside the loop.
# ------------------------------------------------------------------------------------------------


def torch_lstm_loop(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, U: Tensor,
                    b: Tensor) -> Tensor:
    T, B, F = x.size(0), x.size(1), x.size(2)
    xw = torch.addmm(b, x.reshape(T * B, F), W).reshape(T, B, W.size(1))
    h, c = h0, c0
    ys: list[Tensor] = []
    for t in range(T):
        i, f, g, o = torch.addmm(xw[t], h, U).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)


def torch_gru_loop(x: Tensor, h0: Tensor, W: Tensor, U: Tensor, bx: Tensor,
                   bh: Tensor) -> Tensor:
    T, B, F = x.size(0), x.size(1), x.size(2)
    xw = torch.addmm(bx, x.reshape(T * B, F), W).reshape(T, B, W.size(1))
    h = h0
    ys: list[Tensor] = []
    for t in range(T):
        xr, xz, xn = xw[t].chunk(3, 1)
        hr, hz, hn = torch.addmm(bh, h, U).chunk(3, 1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = n + z * (h - n)
        ys.append(h)
    return torch.stack(ys)


def torch_elman_loop(x: Tensor, h0: Tensor, Wx: Tensor, Ws: Tensor, b: Tensor) -> Tensor:
    T, B, F = x.size(0), x.size(1), x.size(2)
    xw = torch.addmm(b, x.reshape(T * B, F), Wx).reshape(T, B, Wx.size(1))
    h = h0
    ys: list[Tensor] = []
    for t in range(T):
        h = torch.tanh(torch.addmm(xw[t], h, Ws))
        ys.append(h)
    return torch.stack(ys)


def torch_mgu_loop(x: Tensor, h0: Tensor, Wf: Tensor, Uf: Tensor, bf: Tensor, Wh: Tensor,
                   Uh: Tensor, bh: Tensor) -> Tensor:
    T, B, F = x.size(0), x.size(1), x.size(2)
    x2 = x.reshape(T * B, F)
    xf = torch.addmm(bf, x2, Wf).reshape(T, B, Wf.size(1))
    xh = torch.addmm(bh, x2, Wh).reshape(T, B, Wh.size(1))
    h = h0
    ys: list[Tensor] = []
    for t in range(T):
        f = torch.sigmoid(torch.addmm(xf[t], h, Uf))
        hc = torch.tanh(torch.addmm(xh[t], f * h, Uh))
        h = h + f * (hc - h)
        ys.append(h)
    return torch.stack(ys)


def torch_cifg_loop(x: Tensor, h0: Tensor, c0: Tensor, W: Tensor, U: Tensor,
                    b: Tensor) -> Tensor:
    T, B, F = x.size(0), x.size(1), x.size(2)
    xw = torch.addmm(b, x.reshape(T * B, F), W).reshape(T, B, W.size(1))
    h, c = h0, c0
    ys: list[Tensor] = []
    for t in range(T):
        zf, zg, zo = torch.addmm(xw[t], h, U).chunk(3, 1)
        f = torch.sigmoid(zf)
        c = f * c + (1 - f) * torch.tanh(zg)
        h = torch.sigmoid(zo) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys)


TORCH_LOOPS: dict[str, Callable[..., Any]] = {
    "lstm": torch_lstm_loop, "gru": torch_gru_loop, "elman": torch_elman_loop,
    "mgu": torch_mgu_loop, "cifg": torch_cifg_loop}
PARAM_ORDER = {"lstm": ("W", "U", "b"), "gru": ("W", "U", "bx", "bh"),
               "elman": ("Wx", "Ws", "b"), "mgu": ("Wf", "Uf", "bf", "Wh", "Uh", "bh"),
               "cifg": ("W", "U", "b")}


# ------------------------------------------------------------------------------------------------
# Backends: each gives fwd() and fwdbwd() (the timed calls) and check_* (results by rnnlang name).
# ------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One (case, cell): sizes, data, parameters (rnnlang's, randomized) and the cotangent."""

    case: str
    T: int
    B: int
    H: int
    cell: str
    x: np.ndarray
    cot: np.ndarray
    params: Arrays
    states0: Arrays = field(default_factory=dict)  # zeros, by state name (h, c)


class Backend:
    name = ""

    def fwd(self) -> Any:
        raise NotImplementedError

    def fwdbwd(self) -> Any:
        raise NotImplementedError

    def check_fwd(self) -> Arrays:
        raise NotImplementedError

    def check_fwdbwd(self) -> Arrays:
        raise NotImplementedError


class RnnlangBackend(Backend):
    name = "rnnlang"

    def __init__(self, model: Any, pb: Problem):
        self.m = model
        self.inputs = {"x": pb.x}
        self.cots = {"y": pb.cot}

    def fwd(self) -> Any:
        return self.m.forward(self.inputs)

    def fwdbwd(self) -> Any:
        return self.m.vjp(self.inputs, self.cots)

    def check_fwd(self) -> Arrays:
        return {"y": self.fwd()["y"]}

    def check_fwdbwd(self) -> Arrays:
        g = self.fwdbwd()
        out = {"y": g.outputs["y"]}
        out.update(g.params)
        out.update(g.inputs)
        return out


class NumpyBackend(Backend):
    name = "numpy-loop"

    def __init__(self, pb: Problem):
        self.fn = NUMPY_CELLS[pb.cell]
        self.pb = pb

    def fwd(self) -> Any:
        return self.fn(self.pb.params, self.pb.x, self.pb.states0, None)

    def fwdbwd(self) -> Any:
        return self.fn(self.pb.params, self.pb.x, self.pb.states0, self.pb.cot)

    def check_fwd(self) -> Arrays:
        return {"y": self.fwd()[0]}

    def check_fwdbwd(self) -> Arrays:
        y, g = self.fwdbwd()
        return {"y": y, **g}


class TorchBackend(Backend):
    """Shared by the torch baselines: ``_run`` gives the output; gradients by torch.autograd."""

    def __init__(self, pb: Problem):
        self.pb = pb
        self.x = torch.from_numpy(pb.x.copy())
        self.cot = torch.from_numpy(pb.cot.copy())
        self.s0 = {k: torch.from_numpy(v.copy()) for k, v in pb.states0.items()}
        self.grad_names: list[str] = []
        self.leaves: list[Tensor] = []

    def _run(self) -> Tensor:
        raise NotImplementedError

    def _grad_to_rnnlang(self, grads: Sequence[Tensor]) -> Arrays:
        return {n: g.numpy() for n, g in zip(self.grad_names, grads, strict=True)}

    def fwd(self) -> Any:
        with torch.no_grad():
            return self._run()

    def fwdbwd(self) -> Any:
        y = self._run()
        return y, torch.autograd.grad(y, self.leaves, self.cot)

    def check_fwd(self) -> Arrays:
        return {"y": self.fwd().numpy()}

    def check_fwdbwd(self) -> Arrays:
        y, grads = self.fwdbwd()
        return {"y": y.detach().numpy(), **self._grad_to_rnnlang(grads)}


class TorchNativeBackend(TorchBackend):
    name = "torch-native"

    def __init__(self, pb: Problem):
        super().__init__(pb)
        F, H, p = pb.x.shape[2], pb.H, pb.params
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[pb.cell]
        self.rnn = cls(F, H)
        w_ih, w_hh = ("h.Wx", "h.Ws") if pb.cell == "elman" else ("h.W", "h.U")
        b_ih, b_hh = ("h.bx", "h.bh") if pb.cell == "gru" else ("h.b", None)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(p[w_ih].T.copy()))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(p[w_hh].T.copy()))
            self.rnn.bias_ih_l0.copy_(torch.from_numpy(p[b_ih]))
            self.rnn.bias_hh_l0.copy_(torch.from_numpy(p[b_hh]) if b_hh else 0.0)
        self.names = (w_ih, w_hh, b_ih, b_hh)
        x = self.x.requires_grad_(True)
        s = STATES[pb.cell][0]
        h0 = self.s0[s][None].requires_grad_(True)
        self.hx: Any = h0
        self.leaves = [x, h0]
        self.grad_names = ["x", f"h.{s}0"]
        if pb.cell == "lstm":
            c0 = self.s0["c"][None].requires_grad_(True)
            self.hx = (h0, c0)
            self.leaves.append(c0)
            self.grad_names.append("h.c0")
        self.leaves += [self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.rnn.bias_ih_l0,
                        self.rnn.bias_hh_l0]

    def _run(self) -> Tensor:
        return self.rnn(self.x, self.hx)[0]

    def _grad_to_rnnlang(self, grads: Sequence[Tensor]) -> Arrays:
        k = len(self.grad_names)  # x, then the states as (1, B, H)
        out = {n: g.numpy().reshape(self.pb.x.shape if n == "x" else (self.pb.B, self.pb.H))
               for n, g in zip(self.grad_names, grads[:k], strict=True)}
        w_ih, w_hh, b_ih, b_hh = self.names
        dwi, dwh, dbi, dbh = grads[k:]
        out[w_ih] = dwi.numpy().T
        out[w_hh] = dwh.numpy().T
        out[b_ih] = dbi.numpy()
        if b_hh is not None:
            out[b_hh] = dbh.numpy()
        return out


class TorchLoopBackend(TorchBackend):
    name = "torch-loop"

    def __init__(self, pb: Problem, kind: str = "eager"):
        """``kind``: ``eager``, ``script`` (torch.jit.script) or ``compile`` (torch.compile,
        which compiles on the first call of each mode: see `first_call_within`)."""
        super().__init__(pb)
        fn = TORCH_LOOPS[pb.cell]
        self.fn = fn
        if kind == "script":
            with warnings.catch_warnings():  # "torch.jit.script is deprecated" (torch >= 2.10)
                warnings.simplefilter("ignore", DeprecationWarning)
                self.fn = torch.jit.script(fn)
            self.name = "torch-script"
        elif kind == "compile":
            torch._dynamo.reset()  # a fresh compile per case, not a recompile of the last one
            self.fn = torch.compile(fn)
            self.name = "torch-compile"
        x = self.x.requires_grad_(True)
        states = [self.s0[s].requires_grad_(True) for s in STATES[pb.cell]]
        pnames = [f"h.{n}" for n in PARAM_ORDER[pb.cell]]
        params = [torch.from_numpy(pb.params[n].copy()).requires_grad_(True) for n in pnames]
        self.args = [x, *states, *params]
        self.leaves = list(self.args)
        self.grad_names = ["x", *(f"h.{s}0" for s in STATES[pb.cell]), *pnames]

    def _run(self) -> Tensor:
        return self.fn(*self.args)


# ------------------------------------------------------------------------------------------------
# torch.compile: a time limit on the first call (the compile) and which cases to skip
# ------------------------------------------------------------------------------------------------


class CompileTimeout(Exception):
    """The first call of a torch.compile'd function ran past the limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CompileTimeout


def first_call_within(fn: Callable[[], Any], limit_s: float) -> float | None:
    """Seconds of ``fn()`` (for torch.compile: trace, compile and one run), or None when it ran
    past ``limit_s`` and was interrupted by SIGALRM. Outside the main thread no signal can be
    set and the limit is not enforced."""
    try:
        old = signal.signal(signal.SIGALRM, _on_alarm)
    except ValueError:  # pragma: no cover - not the main thread
        old = None
    t0 = time.perf_counter()
    try:
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, limit_s)
        fn()
        return time.perf_counter() - t0
    except CompileTimeout:
        return None
    except Exception:  # torch wraps the alarm's exception (BackendCompilerFailed)
        if time.perf_counter() - t0 >= limit_s:
            return None
        raise
    finally:
        if old is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


class CompileGate:
    """Skips torch.compile cases that would run past the limit, per (cell, mode): one whose T
    is at least that of a case that already ran past it, and one whose predicted compile time
    (a measured compile at a shorter T scaled by the T ratio: the loop is unrolled, so compile
    time grows at least linearly with T) is over the limit."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.seen: dict[tuple[str, str], list[tuple[int, float | None]]] = {}

    def skip_reason(self, cell: str, mode: str, T: int) -> str | None:
        for t_old, secs in self.seen.get((cell, mode), []):
            if secs is None and T >= t_old:
                return f"compile ran past {self.limit_s:g} s at T={t_old}"
            if secs is not None and t_old < T and secs * T / t_old > self.limit_s:
                return (f"predicted compile {secs * T / t_old:.0f} s > {self.limit_s:g} s "
                        f"({secs:.0f} s at T={t_old}, scaled by T)")
        return None

    def record(self, cell: str, mode: str, T: int, secs: float | None) -> None:
        self.seen.setdefault((cell, mode), []).append((T, secs))


# ------------------------------------------------------------------------------------------------
# GEMM floor
# ------------------------------------------------------------------------------------------------

_NJIT_DOT: Any = None


def _njit_dot() -> Any:
    global _NJIT_DOT
    if _NJIT_DOT is None:
        from numba import njit

        @njit(cache=False)
        def loop(a: np.ndarray, b: np.ndarray, c: np.ndarray, n: int) -> None:
            for _ in range(n):
                np.dot(a, b, c)

        _NJIT_DOT = loop
    return _NJIT_DOT


def time_gemm(m: int, k: int, n: int, rng: np.random.Generator, min_time: float = 0.01,
              samples: int = 7) -> dict[str, float]:
    """Seconds for one float32 (m,k)@(k,n) product: np.dot called from Python and from an @njit
    loop (no interpreter overhead); the floor uses the faster of the two. The minimum over
    samples, not the median: the floor is a best case, and the minimum ignores samples slowed by
    other processes."""
    a = rng.standard_normal((m, k)).astype(F32)
    b = rng.standard_normal((k, n)).astype(F32)
    c = np.empty((m, n), F32)
    jit = _njit_dot()
    py_call: Callable[[int], None] = lambda cnt: [np.dot(a, b, c) for _ in range(cnt)]  # noqa: E731
    res: dict[str, float] = {}
    for label, run in (("python_s", py_call), ("njit_s", lambda cnt: jit(a, b, c, cnt))):
        run(2)
        t0 = time.perf_counter()
        run(1)
        one = max(time.perf_counter() - t0, 1e-7)
        cnt = max(1, int(min_time / one))
        vals = []
        for _ in range(samples):
            t0 = time.perf_counter()
            run(cnt)
            vals.append((time.perf_counter() - t0) / cnt)
        res[label] = min(vals)
    res["s"] = min(res["python_s"], res["njit_s"])
    res["gflops"] = 2.0 * m * k * n / res["s"] / 1e9
    return res


class GemmTable:
    """Measured GEMM times by shape: each shape is measured again in every cell that uses it
    (`new_epoch`) and keeps its fastest measurement. The floor is a best case, and a single
    measurement taken in a slow moment of this shared VM put a floor above rnnlang's own time
    (2026-11-27, EPYC: large elman forward at 0.94x "of the floor", large gru and cifg at
    0.67-0.89x in another run)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.shapes: dict[tuple[int, int, int], dict[str, float]] = {}
        self.epoch = 0
        self._measured: dict[tuple[int, int, int], int] = {}  # shape -> epoch last measured

    def new_epoch(self) -> None:
        self.epoch += 1

    def t(self, m: int, k: int, n: int, measure: bool = True) -> float:
        """Seconds per (m, k) @ (k, n): the fastest so far, measured again first unless this
        epoch measured it already (or ``measure`` is False and there is a measurement)."""
        key = (m, k, n)
        if key not in self.shapes or (measure and self._measured[key] != self.epoch):
            got = time_gemm(m, k, n, self.rng)
            if key not in self.shapes or got["s"] < self.shapes[key]["s"]:
                self.shapes[key] = got
            self._measured[key] = self.epoch
        return self.shapes[key]["s"]


def floor_times(gemm: GemmTable, T: int, B: int, H: int, F: int, gates: int,
                measure: bool = True) -> dict[str, Any]:
    """Matmul-only time: forward = T per-step (B,H)@(H,gH) + one hoisted (TB,F)@(F,gH);
    forward+backward adds T per-step (B,gH)@(gH,H) for dh and, hoisted over all steps,
    dW = x^T dz and dU = h^T dz ((F,TB)@(TB,gH)) and dx = dz W^T ((TB,gH)@(gH,F)).
    ``measure=False``: from the table's measurements only."""
    G = gates * H
    step_f = gemm.t(B, H, G, measure)
    step_b = gemm.t(B, G, H, measure)
    big_f = gemm.t(T * B, F, G, measure)
    big_w = gemm.t(F, T * B, G, measure)
    big_x = gemm.t(T * B, G, F, measure)
    fwd = T * step_f + big_f
    fwdbwd = T * (step_f + step_b) + big_f + 2 * big_w + big_x
    flops_fwd = 2.0 * T * B * H * G + 2.0 * T * B * F * G
    return {"fwd_s": fwd, "fwdbwd_s": fwdbwd, "step_fwd_s": step_f, "step_bwd_s": step_b,
            "hoisted_fwd_s": big_f, "flops_fwd": flops_fwd,
            "flops_fwdbwd": 2 * flops_fwd + 2.0 * T * B * F * G + 2.0 * T * B * H * G,
            "step_gflops": 2.0 * B * H * G / step_f / 1e9,
            "hoisted_gflops": 2.0 * T * B * F * G / big_f / 1e9}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def parse_case(tok: str) -> tuple[str, tuple[int, int, int]]:
    if tok in CASES:
        return tok, CASES[tok]
    parts = tok.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"unknown case {tok!r}: use {', '.join(CASES)} or TxBxH such as 5x2x8")
    T, B, H = (int(p) for p in parts)
    return tok, (T, B, H)


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(s: str) -> list[str]:
        items = [t.strip() for t in s.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help=f"comma list of {', '.join(CASES)} or TxBxH (default %(default)s)")
    ap.add_argument("--cells", type=_csv(CELLS), default=list(CELLS),
                    help=f"comma list of {', '.join(CELLS)} (default all)")
    ap.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                    help="fwd (inference), fwdbwd (forward + all gradients); default both")
    ap.add_argument("--backends", type=_csv(BASELINES), default=list(BASELINES),
                    help="baselines to run if installed (rnnlang always runs)")
    ap.add_argument("--repeats", type=int, default=21, help="max timed rounds per figure")
    ap.add_argument("--min-repeats", type=int, default=5, help="min timed rounds per figure")
    ap.add_argument("--warmup", type=int, default=CHOICE_CALLS,
                    help="untimed calls before timing; with the checking call and the "
                    "estimate, the calls 2 to 10 that rnnlang's parallel=\"auto\" times to "
                    "choose its plan (default %(default)s)")
    ap.add_argument("--budget", type=float, default=6.0,
                    help="seconds of timed rounds per (case, cell, mode) before cutting repeats")
    ap.add_argument("--min-sample-ms", type=float, default=20.0,
                    help="calls per sample are batched until a sample lasts this long")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for torch and Numba; run as a script, also for BLAS and OpenMP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None,
                    help="rnnlang module cache (default: a fresh temp dir, so compile is cold)")
    ap.add_argument("--no-check", action="store_true", help="skip the agreement checks")
    ap.add_argument("--strict", action="store_true",
                    help="exit 1 when an acceptance line FAILs (default: only on wrong results)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write all results as JSON")
    ap.add_argument("--compile-limit", type=float, default=180.0, metavar="S",
                    help="skip a torch.compile case whose compile takes longer (default 180)")
    ap.add_argument("--compile-time", action="store_true",
                    help="also measure rnnlang's cold and cached compile of a 2-layer LSTM in "
                    "fresh processes (bench_startup.py)")
    ap.add_argument("--memory", action="store_true",
                    help="also measure a training step's memory against the BPTT minimum, per "
                    "case and cell, in fresh processes (bench_memory.py)")
    ap.add_argument("--no-speed", action="store_true",
                    help="skip the timing table (with --compile-time or --memory)")
    return ap


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def load_warnings(start: float | None, end: float | None, cores: int | None) -> list[str]:
    """Warnings when other processes were using the CPUs: a 1-minute load average of 0.75 or
    more before the run, or above cores + 0.5 at its end (this run itself keeps up to about
    ``cores`` threads busy)."""
    out = []
    msg = "other processes are using the CPUs, so figures and ratios are unreliable"
    if start is not None and start >= 0.75:
        out.append(f"WARNING: load average {start:.2f} before the run: {msg}")
    if end is not None and cores and end > cores + 0.5:
        out.append(f"WARNING: load average {end:.2f} at the end ({cores} cores): {msg}")
    return out


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba

    import rnnlang
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "cpu": cpu, "cores": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "numba": numba.__version__, "rnnlang": rnnlang.__version__, "threads": threads,
        "numba_threads": numba.get_num_threads(),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "jax": bench_jax.version(), "cpu_affinity": len(os.sched_getaffinity(0)),
        "loadavg_start": _loadavg(),
        "thread_env": {v: os.environ.get(v, "unset") for v in THREAD_VARS}}
    return info


def set_threads(n: int) -> None:
    import numba
    try:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ValueError:  # pragma: no cover
        pass
    if torch is not None:
        torch.set_num_threads(n)


def make_problem(case: str, T: int, B: int, H: int, cell: str, model: Any,
                 rng: np.random.Generator) -> Problem:
    """Random data and parameters (biases made nonzero), copied into the rnnlang model."""
    for arr in model.params.values():
        if arr.ndim == 1:  # biases default to zeros: never time on zeros
            arr[...] = rng.uniform(-0.1, 0.1, arr.shape).astype(F32)
    params = {k: v.copy() for k, v in model.params.items()}
    x = rng.standard_normal((T, B, H)).astype(F32)
    cot = rng.standard_normal((T, B, H)).astype(F32)
    states0 = {s: np.zeros((B, H), F32) for s in STATES[cell]}
    return Problem(case, T, B, H, cell, x, cot, params, states0)


def compare(ref: Arrays, got: Arrays) -> tuple[float, list[str]]:
    """Max over the arrays both give of max|got - ref| / max|ref|; names missing from got."""
    worst = 0.0
    missing = []
    for k, r in ref.items():
        g = got.get(k)
        if g is None:
            missing.append(k)
            continue
        g = np.asarray(g).reshape(r.shape)
        scale = float(np.max(np.abs(r))) or 1.0
        worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - r))) / scale)
    return worst, missing


def fmt_ms(s: float | None) -> str:
    if s is None:
        return "n/a"
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


@dataclass
class RunState:
    """What the run collects; one per `run`."""

    args: argparse.Namespace
    cache_dir: str
    out: TextIO
    baselines: list[str]
    rng: np.random.Generator
    gemm: GemmTable
    gate: CompileGate
    results: list[dict[str, Any]] = field(default_factory=list)
    compiles: list[dict[str, Any]] = field(default_factory=list)
    baseline_compiles: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)
    floors: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    bad: int = 0


def available_baselines(wanted: Sequence[str]) -> list[str]:
    """The wanted baselines whose libraries are installed."""
    def ok(b: str) -> bool:
        if b == "jax-scan":
            return bench_jax.available()
        return b == "numpy-loop" or torch is not None
    return [b for b in wanted if ok(b)]


def make_backends(st: RunState, pb: Problem, rn: RnnlangBackend) -> list[Backend]:
    backends: list[Backend] = [rn]
    for b in st.baselines:
        if b == "numpy-loop":
            backends.append(NumpyBackend(pb))
        elif b == "torch-native" and pb.cell in NATIVE:
            backends.append(TorchNativeBackend(pb))
        elif b in ("torch-loop", "torch-script", "torch-compile"):
            backends.append(TorchLoopBackend(pb, kind=b.split("-")[1].replace("loop", "eager")))
        elif b == "jax-scan":
            jx = bench_jax.JaxScan(pb.cell, pb.params, pb.x, pb.states0, pb.cot)
            for mode, secs in jx.compile_s.items():
                st.baseline_compiles.append({"case": pb.case, "cell": pb.cell, "mode": mode,
                                             "backend": jx.name, "compile_s": secs})
            backends.append(jx)  # type: ignore[arg-type]
    return backends


def compile_or_skip(st: RunState, be: Backend, pb: Problem, mode: str) -> bool:
    """torch.compile's first call of ``mode`` under the limit; False: skip it (recorded)."""
    reason = st.gate.skip_reason(pb.cell, mode, pb.T)
    secs = None
    if reason is None:
        t0 = time.perf_counter()
        try:
            secs = first_call_within(getattr(be, mode), st.args.compile_limit)
        except Exception as exc:  # noqa: BLE001 - e.g. inductor's RecursionError at T=1000
            msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            reason = (f"torch.compile failed after {time.perf_counter() - t0:.0f} s: "
                      f"{type(exc).__name__}: {msg}")
        st.gate.record(pb.cell, mode, pb.T, secs)
        if secs is None and reason is None:
            reason = f"compile ran past {st.args.compile_limit:g} s"
        if secs is None:
            torch._dynamo.reset()
    if reason is not None:
        st.skips.append({"case": pb.case, "cell": pb.cell, "mode": mode, "backend": be.name,
                         "reason": reason})
        print(f"   {pb.case} {pb.cell} {mode}: {be.name} skipped: {reason}", file=st.out,
              flush=True)
        return False
    st.baseline_compiles.append({"case": pb.case, "cell": pb.cell, "mode": mode,
                                 "backend": be.name, "compile_s": secs})
    return True


def check_backends(st: RunState, pb: Problem, mode: str, backends: list[Backend]) -> None:
    ref = getattr(backends[0], f"check_{mode}")()
    for be in backends[1:]:
        err, missing = compare(ref, getattr(be, f"check_{mode}")())
        ok = err <= CHECK_TOL and not missing
        st.checks.append({"case": pb.case, "cell": pb.cell, "mode": mode, "backend": be.name,
                          "max_rel_err": err, "missing": missing, "ok": ok})
        if not ok:
            st.bad += 1
            print(f"!! {pb.case} {pb.cell} {mode}: {be.name} disagrees with rnnlang: max rel "
                  f"err {err:.2e}" + (f", missing {missing}" if missing else ""), file=st.out)


def time_mode(st: RunState, pb: Problem, mode: str, backends: list[Backend],
              fl: dict[str, Any]) -> None:
    a = st.args
    timed = time_interleaved({be.name: getattr(be, mode) for be in backends}, warmup=a.warmup,
                             repeats=a.repeats, min_repeats=a.min_repeats, budget_s=a.budget,
                             min_sample_s=a.min_sample_ms / 1e3)
    base = timed["rnnlang"]["median_s"]
    line = [f"{pb.case} {pb.cell} {mode}: rnnlang {fmt_ms(base)} ms"]
    for name, tm in timed.items():
        med = tm["median_s"]
        st.results.append({
            "case": pb.case, "T": pb.T, "B": pb.B, "H": pb.H, "cell": pb.cell, "mode": mode,
            "backend": name, "median_ms": med * 1e3, "min_ms": tm["min_s"] * 1e3,
            "samples_ms": [s * 1e3 for s in tm["samples_s"]], "calls_per_sample": tm["number"],
            "repeats": tm["repeats"], "tokens_per_s": pb.T * pb.B / med, "ratio": med / base,
            "floor_ms": fl[f"{mode}_s"] * 1e3})
        if name != "rnnlang":
            line.append(f"{name} {fmt_ms(med)} ({fmt_ratio(med / base)})")
    line.append(f"floor {fmt_ms(fl[f'{mode}_s'])}")
    print(" | ".join(line), file=st.out, flush=True)


def run_cell(st: RunState, case: str, T: int, B: int, H: int, cell: str) -> None:
    """Compile, check and time one (case, cell) in every mode."""
    import rnnlang

    a = st.args
    t0 = time.perf_counter()
    model = rnnlang.compile(model_source(cell), target="cpu", dtype="float32",
                            cache_dir=st.cache_dir, seed=a.seed, H=H, F=H)
    comp = {"case": case, "cell": cell, "front_s": time.perf_counter() - t0}
    pb = make_problem(case, T, B, H, cell, model, st.rng)
    rn = RnnlangBackend(model, pb)
    for mode in a.modes:
        t0 = time.perf_counter()
        getattr(rn, mode)()
        comp[f"first_{mode}_s"] = time.perf_counter() - t0
    st.compiles.append(comp)
    backends = make_backends(st, pb, rn)
    st.gemm.new_epoch()
    fl = floor_times(st.gemm, T, B, H, H, GATES[cell])
    st.floors.append({"case": case, "T": T, "B": B, "H": H, "cell": cell, **fl})
    for mode in a.modes:
        here = [be for be in backends
                if be.name != "torch-compile" or compile_or_skip(st, be, pb, mode)]
        if not a.no_check:
            check_backends(st, pb, mode, here)
        time_mode(st, pb, mode, here, fl)


def final_floors(st: RunState) -> None:
    """Every floor of the report from each shape's fastest measurement of the whole run (the
    lines printed while running show the measurements so far)."""
    by_cell = {}
    for f in st.floors:
        f.update(floor_times(st.gemm, f["T"], f["B"], f["H"], f["H"], GATES[f["cell"]],
                             measure=False))
        by_cell[(f["case"], f["cell"])] = f
    for r in st.results:
        r["floor_ms"] = by_cell[(r["case"], r["cell"])][f"{r['mode']}_s"] * 1e3


def run(args: argparse.Namespace, out: TextIO) -> tuple[dict[str, Any], int]:
    set_threads(args.threads)
    cases = [parse_case(t.strip()) for t in args.cases.split(",") if t.strip()]
    baselines = available_baselines(args.backends)
    info = machine_info(args.threads)
    print(f"# rnnlang CPU benchmark, {info['date']}: {info['cpu']}, {info['cores']} cores, "
          f"{args.threads} threads; numpy {info['numpy']}, numba {info['numba']}, "
          f"torch {info['torch'] or 'not installed'}, jax {info['jax'] or 'not installed'}, "
          f"rnnlang {info['rnnlang']}", file=out)
    for w in load_warnings(info["loadavg_start"], None, info["cores"]):
        print(f"# {w}", file=out)
    skipped = [b for b in args.backends if b not in baselines]
    if skipped:
        print(f"# skipped (not installed): {', '.join(skipped)}", file=out)
    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rnnbench-")
        cache_dir = tmp.name
    st = RunState(args, cache_dir, out, baselines, np.random.default_rng(args.seed),
                  GemmTable(args.seed + 1), CompileGate(args.compile_limit))
    extra: dict[str, Any] = {}
    try:
        if not args.no_speed:
            for case, (T, B, H) in cases:
                for cell in args.cells:
                    run_cell(st, case, T, B, H, cell)
        if args.compile_time:
            import bench_startup
            extra["compile_time"] = bench_startup.measure(out=out)
        if args.memory:
            import bench_memory
            extra["memory"] = bench_memory.measure([(c, s) for c, s in cases], args.cells,
                                                   cache_dir=cache_dir, out=out)
    finally:
        if tmp is not None:
            tmp.cleanup()

    final_floors(st)
    info["loadavg_end"] = _loadavg()
    info["warnings"] = load_warnings(info["loadavg_start"], info["loadavg_end"], info["cores"])
    report = {"machine": info, "config": dict(vars(args)),
              "cases": {c: dict(zip("TBH", s, strict=True)) for c, s in cases},
              "compile": st.compiles, "baseline_compile": st.baseline_compiles,
              "skips": st.skips, "gemm": [{"m": m, "k": k, "n": n, **v}
                                          for (m, k, n), v in st.gemm.shapes.items()],
              "floor": st.floors, "checks": st.checks, "results": st.results,
              "acceptance": acceptance_lines(st.results), **extra}
    report["targets"] = target_lines(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\n# wrote {args.json}", file=out)
    print_report(report, out)
    rc = 1 if st.bad else 0
    if args.strict and any(a["status"] == "FAIL" for a in report["acceptance"]):
        rc = 1
    return report, rc


def acceptance_lines(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for cell, mode, (T, B, H), baseline, need, strict in ACCEPTANCE:
        def pick(be: str, cell: str = cell, mode: str = mode, T: int = T, B: int = B,
                 H: int = H) -> dict[str, Any] | None:
            return next((r for r in results if r["cell"] == cell and r["mode"] == mode and
                         (r["T"], r["B"], r["H"]) == (T, B, H) and r["backend"] == be), None)
        r_b, r_r = pick(baseline), pick("rnnlang")
        cmp = ">" if strict else ">="
        item: dict[str, Any] = {"cell": cell, "mode": mode, "T": T, "B": B, "H": H,
                                "baseline": baseline, "need": f"{cmp} {need:g}x"}
        if r_b is None or r_r is None:
            item.update(status="SKIP", ratio=None)
        else:
            ratio = r_b["median_ms"] / r_r["median_ms"]
            ok = ratio > need if strict else ratio >= need
            item.update(status="PASS" if ok else "FAIL", ratio=ratio,
                        rnnlang_ms=r_r["median_ms"], baseline_ms=r_b["median_ms"])
        out.append(item)
    return out


def target_lines(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets as PASS / FAIL / SKIP lines: rnnlang at least as fast as the best
    baseline in every row; cold compile < 10 s and cached start < 1 s; BPTT storage within
    1.5x of the minimum."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["case"], r["cell"], r["mode"]) for r in rep["results"]))
    losses = []
    for key in keys:
        rs = [r for r in rep["results"] if (r["case"], r["cell"], r["mode"]) == key]
        others = [r for r in rs if r["backend"] != "rnnlang"]
        if others:
            best = min(others, key=lambda r: r["median_ms"])
            if best["ratio"] < 1.0:
                losses.append(f"{' '.join(key)} {best['backend']} {best['ratio']:.2f}x")
    if keys:
        out.append({"target": "fastest in every row", "status": "FAIL" if losses else "PASS",
                    "detail": f"rnnlang fastest in {len(keys) - len(losses)}/{len(keys)} rows"
                    + ("; loses to: " + ", ".join(losses) if losses else "")})
    ct = rep.get("compile_time")
    if ct:
        for kind in ("cold", "cached"):
            got, need = ct["best_s"][kind], ct["targets_s"][kind]
            out.append({"target": f"{kind} compile < {need:g} s", "detail": f"{got:.2f} s "
                        f"(best of {sum(r['kind'] == kind for r in ct['runs'])}; "
                        f"{got / need:.2f}x the target)",
                        "status": "PASS" if got < need else "FAIL"})
    mem = rep.get("memory")
    if mem:
        worst = max(mem["rows"], key=lambda r: r["residual_ratio"])
        bad = [f"{r['case']} {r['cell']} {r['residual_ratio']:.2f}x" for r in mem["rows"]
               if r["residual_ratio"] > mem["target_ratio"]]
        out.append({"target": f"BPTT storage within {mem['target_ratio']:g}x of the minimum",
                    "status": "FAIL" if bad else "PASS",
                    "detail": f"worst {worst['case']} {worst['cell']} "
                    f"{worst['residual_ratio']:.2f}x" + ("; over: " + ", ".join(bad)
                                                         if bad else "")})
    return out


def _noisy(r: dict[str, Any]) -> str:
    return "~" if r["median_ms"] > NOISY * r["min_ms"] else ""


def print_report(rep: dict[str, Any], out: TextIO) -> None:
    res = rep["results"]
    print("\n## float32 GEMM rate (np.dot; the faster of Python-level and @njit calls; "
          "all shapes in --json)", file=out)
    for f in rep["floor"]:
        G = GATES[f["cell"]] * f["H"]
        print(f"  {f['case']:>8} {f['cell']:<6} per step ({f['B']}x{f['H']})@({f['H']}x{G}): "
              f"{f['step_fwd_s'] * 1e6:.2f} us = {f['step_gflops']:.1f} GFLOP/s; hoisted "
              f"({f['T'] * f['B']}x{f['H']})@({f['H']}x{G}): {f['hoisted_fwd_s'] * 1e6:.1f} us = "
              f"{f['hoisted_gflops']:.1f} GFLOP/s; floor fwd {f['fwd_s'] * 1e3:.3g} ms, "
              f"fwd+bwd {f['fwdbwd_s'] * 1e3:.3g} ms", file=out)
    print("\n## rnnlang compile (s): compile() | first forward (JIT) | first vjp (JIT)", file=out)
    for c in rep["compile"]:
        print(f"  {c['case']:>8} {c['cell']:<6} {c['front_s']:.2f} | "
              f"{c.get('first_fwd_s', float('nan')):.2f} | "
              f"{c.get('first_fwdbwd_s', float('nan')):.2f}", file=out)
    bad = [c for c in rep["checks"] if not c["ok"]]
    if rep["checks"]:
        worst = max(c["max_rel_err"] for c in rep["checks"])
        print(f"\n## agreement with rnnlang: {len(rep['checks']) - len(bad)}/{len(rep['checks'])}"
              f" ok (worst max rel err {worst:.1e}, tolerance {CHECK_TOL:g})", file=out)
        for c in bad:
            print(f"  MISMATCH {c['case']} {c['cell']} {c['mode']} {c['backend']}: "
                  f"{c['max_rel_err']:.2e} missing={c['missing']}", file=out)
    if rep["baseline_compile"] or rep["skips"]:
        print("\n## baseline compile (s, first call of each mode: trace + compile + one run)",
              file=out)
        for c in rep["baseline_compile"]:
            print(f"  {c['case']:>8} {c['cell']:<6} {c['mode']:<6} {c['backend']}: "
                  f"{c['compile_s']:.2f}", file=out)
        for c in rep["skips"]:
            print(f"  {c['case']:>8} {c['cell']:<6} {c['mode']:<6} {c['backend']}: skipped, "
                  f"{c['reason']}", file=out)
    if "compile_time" in rep:
        import bench_startup
        print(bench_startup.text(rep["compile_time"]), file=out)
    if "memory" in rep:
        import bench_memory
        print(bench_memory.text(rep["memory"]), file=out)
    print("\n## targets (issue 5)", file=out)
    for t in rep["targets"]:
        print(f"{t['status']} {t['target']}: {t['detail']}", file=out)
    print("\n## acceptance", file=out)
    for a in rep["acceptance"]:
        where = f"{a['cell']} {a['mode']} T={a['T']} B={a['B']} H={a['H']}"
        if a["status"] == "SKIP":
            print(f"SKIP {where}: case or {a['baseline']} not run", file=out)
        else:
            print(f"{a['status']} {where}: {a['baseline']} {a['baseline_ms']:.3g} ms / rnnlang "
                  f"{a['rnnlang_ms']:.3g} ms = {a['ratio']:.2f}x (need {a['need']})", file=out)

    present = [b for b in BASELINES if any(r["backend"] == b for r in res)]
    head = (["case", "cell", "mode", "rnnlang ms", "rnnlang tok/s"] + present
            + ["best baseline", "floor ms", "rnnlang / floor"])
    rows = []
    keys = list(dict.fromkeys((r["case"], r["cell"], r["mode"]) for r in res))
    for case, cell, mode in keys:
        rs = {r["backend"]: r for r in res
              if (r["case"], r["cell"], r["mode"]) == (case, cell, mode)}
        skipped = {k["backend"] for k in rep["skips"]
                   if (k["case"], k["cell"], k["mode"]) == (case, cell, mode)}
        rn = rs["rnnlang"]
        row = [case, cell, mode, _noisy(rn) + fmt_ms(rn["median_ms"] / 1e3),
               f"{rn['tokens_per_s']:.3g}"]
        for b in present:
            r = rs.get(b)
            row.append(("skip" if b in skipped else "n/a") if r is None else
                       f"{_noisy(r)}{fmt_ms(r['median_ms'] / 1e3)} ({fmt_ratio(r['ratio'])})")
        others = [r for b, r in rs.items() if b != "rnnlang"]
        if others:
            best = min(others, key=lambda r: r["median_ms"])
            row.append(f"{best['backend']} ({fmt_ratio(best['ratio'])})")
        else:
            row.append("n/a")
        row += [fmt_ms(rn["floor_ms"] / 1e3), f"{rn['median_ms'] / rn['floor_ms']:.2f}"]
        rows.append(row)
    m = rep["machine"]
    print(f"\n## results: median ms (baseline_time / rnnlang_time; > 1 means rnnlang is faster)"
          f"\n## {m['date']}, {m['cpu']}, {m['cores']} cores, {m['threads']} threads, float32;"
          f" ~ marks a figure whose median is over {NOISY:g}x its fastest sample", file=out)
    for w in m.get("warnings", []):
        print(f"## {w}", file=out)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
          file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |",
              file=out)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        [parse_case(t.strip()) for t in args.cases.split(",") if t.strip()]
    except argparse.ArgumentTypeError as exc:
        build_parser().error(str(exc))
    _, rc = run(args, out or sys.stdout)
    return rc


if __name__ == "__main__":
    sys.exit(main())
