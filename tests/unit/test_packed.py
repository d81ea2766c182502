"""The packed-weight kernel for the time loops' per-step products (`rnnlang.codegen.packed`):
every tile shape and panel remainder against a float64 NumPy product, the fallbacks to BLAS,
and the generated loops that use it against the reference interpreter in float64."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llvmlite import ir

import rnnlang
from rnnlang.codegen import packed
from tests import reference as R


def _product(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ w.astype(np.float64)


@given(m=st.integers(0, 21), k=st.integers(0, 40), n=st.integers(0, 40),
       a_how=st.sampled_from(["C", "cut", "F"]), w_how=st.sampled_from(["C", "F"]),
       wide_out=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
@settings(max_examples=150, deadline=None)
def test_pgemm_matches_numpy(m: int, k: int, n: int, a_how: str, w_how: str, wide_out: bool,
                             dtype: type, seed: int) -> None:
    """Rows in tiles of 8 and the 4, 2, 1 left over; columns in panels and the last partial
    one; operands cut from wider arrays; a transposed weight (BPTT's U^T); a left operand
    without unit-stride rows goes to BLAS."""
    rng = np.random.default_rng(seed)
    a = {"C": lambda: rng.standard_normal((m, k)),
         "cut": lambda: rng.standard_normal((m, k + 3))[:, 2:k + 2],
         "F": lambda: rng.standard_normal((k, m)).T}[a_how]().astype(dtype)
    w = (rng.standard_normal((k, n)) if w_how == "C"
         else rng.standard_normal((n, k)).T).astype(dtype)
    big = np.full((m, n + (5 if wide_out else 0)), np.nan, dtype)
    out = big[:, :n]
    p = packed.pack(w, packed.MIN_ROWS)
    nr = packed.NR[np.dtype(dtype).name]
    assert p.shape == (-(-n // nr), k, nr)
    packed.pgemm(a, p, w, out)
    tol = 2e-5 * max(k, 1) if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, _product(a, w), rtol=tol, atol=tol)
    assert np.isnan(big[:, n:]).all()  # nothing written past the last column


def test_pack_is_empty_when_the_products_use_blas() -> None:
    w = np.arange(12.0).reshape(3, 4)
    assert packed.pack(w, packed.MIN_ROWS).shape[0] == 1
    assert packed.pack(w, packed.MIN_ROWS - 1).shape[0] == 0  # too few rows to pay
    try:
        packed.set_packing(False)  # a call whose BLAS runs on several threads
        p = packed.pack(w, 64)
        assert p.shape[0] == 0
        a = np.ones((64, 3))
        out = np.empty((64, 4))
        packed.pgemm(a, p, w, out)  # BLAS with the weight as it is
        np.testing.assert_array_equal(out, a @ w)
    finally:
        packed.set_packing(True)
    assert packed.pack(w, 64).shape[0] == 1


@pytest.mark.parametrize("fl, nr", [(ir.FloatType(), 16), (ir.FloatType(), 8),
                                    (ir.DoubleType(), 8), (ir.DoubleType(), 4)])
@pytest.mark.parametrize("mr", [8, 4, 2, 1])
def test_every_tile_size_the_kernel_can_be_built_with(fl: ir.Type, nr: int, mr: int) -> None:
    """The IR for other CPUs' tile sizes (4 rows without AVX-512) and panel widths, built and
    called here through ctypes, every row count from 0 to 2 * mr + 7."""
    mod = ir.Module(name="t")
    packed._kernel(mod, "k", fl, nr, mr)
    llmod = llvm.parse_assembly(str(mod))
    llmod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(llmod, tm)
    engine.finalize_object()
    dtype = np.float32 if isinstance(fl, ir.FloatType) else np.float64
    ptr = ctypes.c_void_p
    i64 = ctypes.c_int64
    fn = ctypes.CFUNCTYPE(None, i64, i64, i64, ptr, i64, ptr, ptr, i64)(
        engine.get_function_address("k"))
    rng = np.random.default_rng(mr * nr)
    for m in range(2 * mr + 8):
        k, n = 1 + m % 5, nr * 2 + m % nr
        a = rng.standard_normal((m, k + 2)).astype(dtype)
        w = rng.standard_normal((k, n)).astype(dtype)
        p = np.zeros((-(-n // nr), k, nr), dtype)
        for j in range(n):
            p[j // nr, :, j % nr] = w[:, j]
        out = np.full((m, n + 1), np.nan, dtype)
        fn(m, n, k, a.ctypes.data, k + 2, p.ctypes.data, out.ctypes.data, n + 1)
        np.testing.assert_allclose(out[:, :n], _product(a[:, :k], w), rtol=1e-5, atol=1e-5)
        assert np.isnan(out[:, n]).all()


CELL = """
model m(H, F) {
  input x: seq[F]
  enc = %s(H) over x
  output y = enc
}
"""

REF = {"lstm": (R.lstm_seq, R.lstm_bptt, {"enc.h0": "h", "enc.c0": "c"}),
       "gru": (R.gru_seq, R.gru_bptt, {"enc.h0": "h"})}


@pytest.mark.parametrize("parallel", ["slices", "blas"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_loops_with_packed_weights_match_the_numpy_reference(cache_dir: Path, kind: str,
                                                             parallel: str) -> None:
    """float64, 9 rows (a tile of 8 and one left over), H = 19 (partial panels), ragged
    lengths, 30 steps (270 rows for the hoisted x W and d W^T, past kernels.HOISTED_MIN_ROWS):
    outputs and every gradient as tests/reference.py computes them, with the kernel (one
    thread) and with BLAS on two threads (whose calls do not pack)."""
    H, F, B = 19, 5, 9
    seq, bptt, states = REF[kind]
    m = rnnlang.compile(CELL % kind, cache_dir=cache_dir, dtype="float64", H=H, F=F,
                        threads=1 if parallel == "slices" else 2, parallel=parallel)
    src = m._executor().source
    assert "kernels.pack(U, n_B)" in src and "kernels.pgemm(" in src
    assert "kernels.pack(U.T, n_B)" in src  # BPTT's d @ U^T
    rng = np.random.default_rng(5)
    p = R.random_params(kind, F, H, rng)
    for k, v in p.items():
        m.params["enc." + k][...] = v
    x = rng.standard_normal((30, B, F))  # 270 rows: the hoisted products use the kernel too
    lens = np.array([30, 3, 30, 1, 17, 30, 29, 2, 30])
    init = {k: 0.5 * rng.standard_normal((B, H)) for k in states}
    ys, _ = seq(p, x, lens, {states[k]: v for k, v in init.items()})
    dY = rng.standard_normal(ys.shape)
    ref = bptt(p, x, dY, lengths=lens, init={states[k]: v for k, v in init.items()})
    g = m.vjp({"x": x}, {"y": dY}, lengths=lens, initial=init)
    tight = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(m.forward({"x": x}, lengths=lens, initial=init)["y"], ys, **tight)
    np.testing.assert_allclose(g.outputs["y"], ys, **tight)
    for k in p:
        np.testing.assert_allclose(g.params["enc." + k], ref[k], **tight, err_msg=k)
    np.testing.assert_allclose(g.inputs["x"], ref["xs"], **tight)
    for k, r in states.items():
        np.testing.assert_allclose(g.inputs[k], ref["init"][r], **tight, err_msg=k)


def test_custom_cell_with_packed_weights_against_finite_differences(cache_dir: Path) -> None:
    """A cell no reference implements: its derived gradients against central differences,
    float64, 5 rows (a tile of 4 and one) so the loops pack."""
    from tests.unit.test_gradients import check_fd, random_problem
    from tests.unit.test_outline import TWICE

    m = rnnlang.compile(TWICE, cache_dir=cache_dir, dtype="float64", threads=1)
    assert "kernels.pgemm(" in m._executor().source
    rng = np.random.default_rng(7)
    for v in m.params.values():
        v[...] = 0.5 * rng.standard_normal(v.shape)
    inputs, initial, cots = random_problem(m, 6, 5, 3, rng)
    check_fd(m, inputs, initial, cots, np.array([6, 2, 5, 6, 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hoisted_products_with_packed_weights(dtype: type) -> None:
    """kernels.mm3 (x W over all steps) and mm3_nt (g W^T) on the kernel from
    HOISTED_MIN_ROWS rows (here 300 rows in blocks: k = 1500 makes a block 174 rows of
    float32, 87 of float64), below it and with packing off on BLAS; all against float64 NumPy."""
    from rnnlang.codegen import kernels

    rng = np.random.default_rng(11)
    for t, b, n, m in [(30, 10, 1500, 37), (5, 3, 20, 33)]:
        assert (t * b >= kernels.HOISTED_MIN_ROWS) == (t == 30)
        x = rng.standard_normal((t, b, n)).astype(dtype)
        w = rng.standard_normal((n, m)).astype(dtype)
        g = rng.standard_normal((t, b, m)).astype(dtype)
        tol = 2e-5 * n if dtype == np.float32 else 1e-10
        for on in (True, False):
            try:
                packed.set_packing(on)
                out = np.full((t, b, m), np.nan, dtype)
                kernels.mm3(x, w, out)
                np.testing.assert_allclose(out, _product(x.reshape(-1, n), w).reshape(t, b, m),
                                           rtol=tol, atol=tol)
                back = np.full((t, b, n), np.nan, dtype)
                kernels.mm3_nt(g, w, back)
                np.testing.assert_allclose(back, _product(g.reshape(-1, m), w.T).reshape(t, b, n),
                                           rtol=tol, atol=tol)
            finally:
                packed.set_packing(True)
