"""Hand-written Numba kernels the generated code calls for structural (non-pointwise) ops.

Kept small and plain: the fused time loops themselves are generated; these are the whole-
sequence helpers around them (pooling, reversal, convolution, reductions, matmuls on 3-D
sequences reshaped to 2-D so one BLAS call covers every time step).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Flags for every jitted function: IEEE semantics for NaN and Inf are kept (no nnan/ninf), but
# contraction, reciprocal and reassociation let LLVM vectorize the fused loops.
FASTMATH = {"contract", "arcp", "reassoc", "nsz"}
_f32 = np.float32
# Eigen's rational approximation of tanh on [-7.9, 7.9] (float32 error under 3e-7 absolute):
# pure arithmetic, so the fused float32 loops vectorize; float64 code uses math.tanh.
_TK = _f32(7.90531110763549805)
_TA = tuple(_f32(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                              5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                              4.89352455891786e-03))
_TB = tuple(_f32(v) for v in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                              4.89352518554385e-03))
_A0, _A1, _A2, _A3, _A4, _A5, _A6 = _TA
_B0, _B1, _B2, _B3 = _TB
_H32 = _f32(0.5)


def _jit(fn):  # type: ignore[no-untyped-def]
    # no inline="always": Numba's IR-level inlining re-types the body at every call site
    # (measured: 10-20% of a 2-layer LSTM's cold compile); LLVM inlines these small functions
    # anyway, and the fused loops still vectorize (same AVX code, checked with inspect_asm)
    return njit(cache=True, fastmath=FASTMATH, error_model="numpy")(fn)


@_jit
def _tanh32(x):  # type: ignore[no-untyped-def]
    x = max(-_TK, min(_TK, x))
    x2 = x * x
    p = x2 * _A0 + _A1
    p = x2 * p + _A2
    p = x2 * p + _A3
    p = x2 * p + _A4
    p = x2 * p + _A5
    p = x2 * p + _A6
    q = x2 * _B0 + _B1
    q = x2 * q + _B2
    q = x2 * q + _B3
    return x * p / q


@_jit
def _sigmoid32(x):  # type: ignore[no-untyped-def]
    return _H32 * _tanh32(_H32 * x) + _H32


@_jit
def _sigmoid(x):  # type: ignore[no-untyped-def]
    # exp(-x) may overflow to inf for very negative x; 1/(1+inf) = 0 is the right limit
    return 1.0 / (1.0 + math.exp(-x))


@_jit
def _softplus(x):  # type: ignore[no-untyped-def]
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


@_jit
def _hard_sigmoid(x):  # type: ignore[no-untyped-def]
    return min(max(x / 6.0 + 0.5, 0.0), 1.0)


@_jit
def _elu(x):  # type: ignore[no-untyped-def]
    return x if x > 0.0 else math.expm1(x)


@_jit
def _gelu(x):  # type: ignore[no-untyped-def]
    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))


@_jit
def _d_gelu(x):  # type: ignore[no-untyped-def]
    return 0.5 * (1.0 + math.erf(x * 0.7071067811865476)) + x * math.exp(
        -0.5 * x * x) * 0.3989422804014327


@_jit
def _d_softsign(x):  # type: ignore[no-untyped-def]
    d = 1.0 + abs(x)
    return 1.0 / (d * d)


@_jit
def _sign(x):  # type: ignore[no-untyped-def]
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)


@njit(cache=True, error_model="numpy")
def mm3(a, w):  # type: ignore[no-untyped-def]
    """(T, B, n) @ (n, m) as one GEMM over all steps."""
    t, b, n = a.shape
    return np.dot(np.ascontiguousarray(a).reshape(t * b, n), w).reshape(t, b, w.shape[1])


@njit(cache=True, error_model="numpy")
def mm3_nt(g, w):  # type: ignore[no-untyped-def]
    t, b, m = g.shape
    return np.dot(np.ascontiguousarray(g).reshape(t * b, m), w.T).reshape(t, b, w.shape[0])


@njit(cache=True, error_model="numpy")
def mm3_tn(a, g):  # type: ignore[no-untyped-def]
    """Weight gradient of a hoisted product: one GEMM over all steps."""
    t, b, n = a.shape
    m = g.shape[2]
    return np.dot(np.ascontiguousarray(a).reshape(t * b, n).T,
                  np.ascontiguousarray(g).reshape(t * b, m))


@njit(cache=True, error_model="numpy")
def mm2_tn(a, g):  # type: ignore[no-untyped-def]
    return np.dot(a.T, g)


@njit(cache=True, error_model="numpy")
def lengths_of(mask):  # type: ignore[no-untyped-def]
    t, b = mask.shape[0], mask.shape[1]
    out = np.zeros(b, np.int64)
    for i in range(t):
        for j in range(b):
            if mask[i, j, 0] > 0.5:
                out[j] += 1
    return out


@njit(cache=True, error_model="numpy")
def last(seq, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    out = np.empty(seq.shape[1:], seq.dtype)
    for j in range(seq.shape[1]):
        out[j] = seq[max(lens[j] - 1, 0), j]
    return out


@njit(cache=True, error_model="numpy")
def last_vjp(g, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    out = np.zeros((mask.shape[0],) + g.shape, g.dtype)
    for j in range(g.shape[0]):
        out[max(lens[j] - 1, 0), j] = g[j]
    return out


@njit(cache=True, error_model="numpy")
def mean(seq, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    out = np.zeros(seq.shape[1:], seq.dtype)
    for j in range(seq.shape[1]):
        for i in range(lens[j]):
            out[j] += seq[i, j]
        out[j] /= max(lens[j], 1)
    return out


@njit(cache=True, error_model="numpy")
def mean_vjp(g, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    out = np.zeros((mask.shape[0],) + g.shape, g.dtype)
    for j in range(g.shape[0]):
        for i in range(lens[j]):
            out[i, j] = g[j] / max(lens[j], 1)
    return out


@njit(cache=True, error_model="numpy")
def reverse(seq, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    out = np.zeros_like(seq)
    for j in range(seq.shape[1]):
        n = lens[j]
        for i in range(n):
            out[i, j] = seq[n - 1 - i, j]
    return out


@njit(cache=True, error_model="numpy")
def repeat(v, t):  # type: ignore[no-untyped-def]
    out = np.empty((t,) + v.shape, v.dtype)
    for i in range(t):
        out[i] = v
    return out


@njit(cache=True, error_model="numpy")
def sum_time(s):  # type: ignore[no-untyped-def]
    out = np.zeros(s.shape[1:], s.dtype)
    for i in range(s.shape[0]):
        out += s[i]
    return out


@njit(cache=True, error_model="numpy")
def conv1d(x, w, b, stride, padding, t_out):  # type: ignore[no-untyped-def]
    k = w.shape[0]
    t_in = x.shape[0]
    out = np.empty((t_out, x.shape[1], w.shape[2]), x.dtype)
    for t in range(t_out):
        out[t] = b
        for j in range(k):
            s = t * stride + j - padding
            if 0 <= s < t_in:
                out[t] += np.dot(x[s], w[j])
    return out


@njit(cache=True, error_model="numpy")
def conv1d_dx(g, w, stride, padding, t_in):  # type: ignore[no-untyped-def]
    k = w.shape[0]
    dx = np.zeros((t_in, g.shape[1], w.shape[1]), g.dtype)
    for t in range(g.shape[0]):
        for j in range(k):
            s = t * stride + j - padding
            if 0 <= s < t_in:
                dx[s] += np.dot(g[t], np.ascontiguousarray(w[j].T))
    return dx


@njit(cache=True, error_model="numpy")
def conv1d_dw(x, g, kernel, stride, padding):  # type: ignore[no-untyped-def]
    dw = np.zeros((kernel, x.shape[2], g.shape[2]), x.dtype)
    for t in range(g.shape[0]):
        for j in range(kernel):
            s = t * stride + j - padding
            if 0 <= s < x.shape[0]:
                dw[j] += np.dot(np.ascontiguousarray(x[s].T), g[t])
    return dw


@njit(cache=True, error_model="numpy")
def shift(seq, fb, by):  # type: ignore[no-untyped-def]
    out = np.empty_like(seq)
    for i in range(seq.shape[0]):
        out[i] = seq[i - by] if i >= by else fb
    return out


@njit(cache=True, error_model="numpy")
def shift0(seq, by):  # type: ignore[no-untyped-def]
    out = np.zeros_like(seq)
    for i in range(by, seq.shape[0]):
        out[i] = seq[i - by]
    return out
