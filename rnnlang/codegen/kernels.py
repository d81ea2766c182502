"""Hand-written Numba kernels the generated code calls for structural (non-pointwise) ops.

Kept small and plain: the fused time loops themselves are generated; these are the whole-
sequence helpers around them (pooling, reversal, convolution, reductions, matmuls on 3-D
sequences reshaped to 2-D so one BLAS call covers every time step).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rnnlang.codegen.blas import gemm, matmul  # noqa: F401  (generated loops call gemm)
from rnnlang.codegen.packed import pack, pgemm  # noqa: F401  (and the packed-weight kernel)

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


# Kernels whose result is sequence- or weight-sized write into ``out``, which the generated
# Python code allocates (NumPy, or a kept work array: `rnnlang.codegen.workspace`): NumPy asks
# the kernel for huge pages on arrays of 4 MB and more, Numba's allocator does not, and a
# fresh (6400, 2048) float32 result then cost 12,800 page faults, 22 ms of a 197 ms LSTM
# forward at (100, 64, 512) (26.6 against 9.4 ms to allocate and fill it, measured
# 2026-11-27). ``out`` must be C-contiguous.
# The sequence products call gemm themselves (not matmul): one jitted layer less per layout
# is ~0.2 s less cold compile each.
#
# The hoisted products x @ W and g @ W^T go to the packed-weight kernel too where the time
# loops do (`rnnlang.codegen.packed`: calls on one thread per slice), once there are at least
# HOISTED_MIN_ROWS rows, so that packing W costs a few percent of the product at most. One
# core, interleaved with SciPy's OpenBLAS on one thread (2-core EPYC, 2026-11-27): (1600, 128)
# @ (128, 512) 109 against 98 GFLOP/s (medians), (3200, 512) @ (512, 512) 109 against 100,
# (3200, 2048) @ (2048, 512) 104 against 96.
HOISTED_MIN_ROWS = 256


@njit(cache=True, nogil=True, error_model="numpy")
def mm3(a, w, out):  # type: ignore[no-untyped-def]
    """(T, B, n) @ (n, m) as one GEMM over all steps."""
    t, b, n = a.shape
    rows = t * b
    pgemm(np.ascontiguousarray(a).reshape(rows, n),
          pack(w, rows if rows >= HOISTED_MIN_ROWS else 0), w, out.reshape(rows, w.shape[1]))


@njit(cache=True, nogil=True, error_model="numpy")
def mm3_nt(g, w, out):  # type: ignore[no-untyped-def]
    t, b, m = g.shape
    rows = t * b
    pgemm(np.ascontiguousarray(g).reshape(rows, m),
          pack(w.T, rows if rows >= HOISTED_MIN_ROWS else 0), w.T,
          out.reshape(rows, w.shape[0]))


@njit(cache=True, nogil=True, error_model="numpy")
def mm3_tn(a, g, out):  # type: ignore[no-untyped-def]
    """Weight gradient of a hoisted product: one GEMM over all steps."""
    t, b, n = a.shape
    m = g.shape[2]
    gemm(np.ascontiguousarray(a).reshape(t * b, n).T, np.ascontiguousarray(g).reshape(t * b, m),
         out)


# The right operand W^T of a per-step x @ W^T (BPTT's d @ U^T), made once before the time loop.
# Measured per step (2-core Xeon, 2026-11-27): NumPy's OpenBLAS (one-thread calls) repacks a
# transposed operand slowly, (32, 512) @ (512, 128) 94 us with U.T against 48 us with a
# C-ordered copy, (64, 2048) @ (2048, 512) 1.73 against 1.43 ms; SciPy's OpenBLAS (threaded
# calls) is as fast or faster with the view (2 threads at that large shape: 1.08 against
# 1.24 ms), and a large copy costs 3 ms itself. So weights up to TRANSPOSE_COPY_MAX elements
# are copied, larger ones used as the view.
TRANSPOSE_COPY_MAX = 1 << 18


@njit(cache=True, nogil=True, error_model="numpy")
def transposed(w, p):  # type: ignore[no-untyped-def]
    """W^T for the products that go to BLAS; the view when ``p = pack(w.T, rows)`` has the
    panels the products use instead."""
    if p.shape[0] == 0 and w.size <= TRANSPOSE_COPY_MAX:
        return np.ascontiguousarray(w.T)
    return w.T


# 2-D products too go through rnnlang's GEMM (`rnnlang.codegen.blas`), never NumPy's in the
# Python-level code, so that every GEMM uses the BLAS whose threads rnnlang controls.
@njit(cache=True, nogil=True, error_model="numpy")
def mm2(a, w):  # type: ignore[no-untyped-def]
    return matmul(a, w)


@njit(cache=True, nogil=True, error_model="numpy")
def mm2_nt(a, w):  # type: ignore[no-untyped-def]
    return matmul(a, w.T)


@njit(cache=True, nogil=True, error_model="numpy")
def mm2_tn(a, g):  # type: ignore[no-untyped-def]
    return matmul(a.T, g)


@njit(cache=True, nogil=True, error_model="numpy")
def lengths_of(mask):  # type: ignore[no-untyped-def]
    t, b = mask.shape[0], mask.shape[1]
    out = np.zeros(b, np.int64)
    for i in range(t):
        for j in range(b):
            if mask[i, j, 0] > 0.5:
                out[j] += 1
    return out


# The sequence kernels below copy with explicit loops over a (T, B, n) view instead of
# assigning array slices (`out[j] = seq[i, j]`): Numba compiles the shape-mismatch error path
# of every slice assignment by formatting strings, which cost about 2 s of cold compile per
# kernel (measured with cProfile on a 2-layer LSTM's first vjp).
@njit(cache=True, nogil=True, error_model="numpy")
def _rows(a):  # type: ignore[no-untyped-def]
    """A (lead0, lead1, rest) view of a C-contiguous copy-if-needed of ``a``."""
    n = 1
    for d in a.shape[2:]:
        n *= d
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], n)


@njit(cache=True, nogil=True, error_model="numpy")
def last(seq, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    s = _rows(seq)
    out = np.empty((s.shape[1], s.shape[2]), seq.dtype)
    for j in range(s.shape[1]):
        i = max(lens[j] - 1, 0)
        for k in range(s.shape[2]):
            out[j, k] = s[i, j, k]
    return out.reshape(seq.shape[1:])


@njit(cache=True, nogil=True, error_model="numpy")
def last_vjp(g, mask, res):  # type: ignore[no-untyped-def]
    """Into ``res``, zeros of shape (T,) + g.shape."""
    lens = lengths_of(mask)
    g2 = np.ascontiguousarray(g).reshape(g.shape[0], g.size // max(g.shape[0], 1))
    out = res.reshape(mask.shape[0], g2.shape[0], g2.shape[1])
    for j in range(g2.shape[0]):
        i = max(lens[j] - 1, 0)
        for k in range(g2.shape[1]):
            out[i, j, k] = g2[j, k]


@njit(cache=True, nogil=True, error_model="numpy")
def mean(seq, mask):  # type: ignore[no-untyped-def]
    lens = lengths_of(mask)
    s = _rows(seq)
    out = np.zeros((s.shape[1], s.shape[2]), seq.dtype)
    for j in range(s.shape[1]):
        for i in range(lens[j]):
            for k in range(s.shape[2]):
                out[j, k] += s[i, j, k]
        d = max(lens[j], 1)
        for k in range(s.shape[2]):
            out[j, k] /= d
    return out.reshape(seq.shape[1:])


@njit(cache=True, nogil=True, error_model="numpy")
def mean_vjp(g, mask, res):  # type: ignore[no-untyped-def]
    """Into ``res``, zeros of shape (T,) + g.shape."""
    lens = lengths_of(mask)
    g2 = np.ascontiguousarray(g).reshape(g.shape[0], g.size // max(g.shape[0], 1))
    out = res.reshape(mask.shape[0], g2.shape[0], g2.shape[1])
    for j in range(g2.shape[0]):
        d = max(lens[j], 1)
        for i in range(lens[j]):
            for k in range(g2.shape[1]):
                out[i, j, k] = g2[j, k] / d


@njit(cache=True, nogil=True, error_model="numpy")
def reverse(seq, mask, res):  # type: ignore[no-untyped-def]
    """Into ``res``, zeros of seq's shape (steps past a row's length stay 0)."""
    lens = lengths_of(mask)
    s = _rows(seq)
    out = res.reshape(s.shape)
    for j in range(s.shape[1]):
        n = lens[j]
        for i in range(n):
            for k in range(s.shape[2]):
                out[i, j, k] = s[n - 1 - i, j, k]


@njit(cache=True, nogil=True, error_model="numpy")
def repeat(v, res):  # type: ignore[no-untyped-def]
    """``v`` at every step of ``res`` (shape (T,) + v.shape)."""
    flat = np.ascontiguousarray(v).ravel()
    t = res.shape[0]
    out = res.reshape(t, flat.size)
    for i in range(t):
        for k in range(flat.size):
            out[i, k] = flat[k]


@njit(cache=True, nogil=True, error_model="numpy")
def sum_time(s):  # type: ignore[no-untyped-def]
    s2 = np.ascontiguousarray(s).reshape(s.shape[0], s.size // max(s.shape[0], 1))
    out = np.zeros(s2.shape[1], s.dtype)
    for i in range(s2.shape[0]):
        for k in range(s2.shape[1]):
            out[k] += s2[i, k]
    return out.reshape(s.shape[1:])


@njit(cache=True, nogil=True, error_model="numpy")
def _taps(n_out, stride, j, padding, n_in):  # type: ignore[no-untyped-def]
    """Output steps t whose input step t*stride + j - padding exists, in order."""
    ts = np.empty(n_out, np.int64)
    n = 0
    for t in range(n_out):
        s = t * stride + j - padding
        if 0 <= s < n_in:
            ts[n] = t
            n += 1
    return ts[:n]


@njit(cache=True, nogil=True, error_model="numpy")
def _gather(a, ts, stride, j, padding):  # type: ignore[no-untyped-def]
    """Rows a[t*stride + j - padding] (or a[t] when stride is 0) for t in ts, as (len*B, n)."""
    b, n = a.shape[1], a.shape[2]
    out = np.empty((ts.size * b, n), a.dtype)
    for u in range(ts.size):
        s = ts[u] * stride + j - padding if stride > 0 else ts[u]
        for i in range(b):
            for k in range(n):
                out[u * b + i, k] = a[s, i, k]
    return out


# A convolution is one GEMM per kernel tap over every output step it reaches (not one small
# GEMM per step and tap).
@njit(cache=True, nogil=True, error_model="numpy")
def conv1d(x, w, b, stride, padding, out):  # type: ignore[no-untyped-def]
    """Into ``out`` (T_out, B, O); every element is written."""
    t_out, nb, no = out.shape
    for t in range(t_out):
        for i in range(nb):
            for o in range(no):
                out[t, i, o] = b[o]
    for j in range(w.shape[0]):
        ts = _taps(t_out, stride, j, padding, x.shape[0])
        if ts.size == 0:
            continue
        p = matmul(_gather(x, ts, stride, j, padding), w[j])
        for u in range(ts.size):
            for i in range(nb):
                for o in range(no):
                    out[ts[u], i, o] += p[u * nb + i, o]


@njit(cache=True, nogil=True, error_model="numpy")
def conv1d_dx(g, w, stride, padding, dx):  # type: ignore[no-untyped-def]
    """Accumulates into ``dx``, zeros of shape (T_in, B, C)."""
    t_in, nb, nc = dx.shape
    for j in range(w.shape[0]):
        ts = _taps(g.shape[0], stride, j, padding, t_in)
        if ts.size == 0:
            continue
        p = matmul(_gather(g, ts, 0, 0, 0), w[j].T)
        for u in range(ts.size):
            s = ts[u] * stride + j - padding
            for i in range(nb):
                for c in range(nc):
                    dx[s, i, c] += p[u * nb + i, c]


@njit(cache=True, nogil=True, error_model="numpy")
def conv1d_dw(x, g, kernel, stride, padding):  # type: ignore[no-untyped-def]
    dw = np.zeros((kernel, x.shape[2], g.shape[2]), x.dtype)
    for j in range(kernel):
        ts = _taps(g.shape[0], stride, j, padding, x.shape[0])
        if ts.size == 0:
            continue
        p = matmul(_gather(x, ts, stride, j, padding).T, _gather(g, ts, 0, 0, 0))
        for c in range(dw.shape[1]):
            for o in range(dw.shape[2]):
                dw[j, c, o] = p[c, o]
    return dw


@njit(cache=True, nogil=True, error_model="numpy")
def shift(seq, fb, by, res):  # type: ignore[no-untyped-def]
    """Into ``res`` (seq's shape): seq delayed by ``by`` steps, ``fb`` before the first."""
    s = _rows(seq)
    f = np.ascontiguousarray(fb).reshape(s.shape[1], s.shape[2])
    out = res.reshape(s.shape)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            for k in range(s.shape[2]):
                out[i, j, k] = s[i - by, j, k] if i >= by else f[j, k]


@njit(cache=True, nogil=True, error_model="numpy")
def shift0(seq, by, res):  # type: ignore[no-untyped-def]
    """Into ``res``, zeros of seq's shape: seq delayed by ``by`` steps."""
    s = _rows(seq)
    out = res.reshape(s.shape)
    for i in range(by, s.shape[0]):
        for j in range(s.shape[1]):
            for k in range(s.shape[2]):
                out[i, j, k] = s[i - by, j, k]
