"""rnnlang's GEMM binding (`rnnlang.codegen.blas`): every layout generated code can hand it,
against NumPy's matmul; and compiled callers stay cacheable (the BLAS routine is bound by
symbol name, not by address)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnlang.codegen import blas


def _view(rng: np.random.Generator, shape: tuple[int, int], dtype: type, how: str) -> np.ndarray:
    """A matrix of ``shape`` laid out as ``how``: C, F (a transposed C array), rows cut from a
    wider array, a strided slice (neither axis unit-stride) or a row of a 3-D array."""
    r, c = shape
    match how:
        case "C":
            return rng.standard_normal((r, c)).astype(dtype)
        case "F":
            return rng.standard_normal((c, r)).astype(dtype).T
        case "cut":
            return rng.standard_normal((r, c + 3)).astype(dtype)[:, 1:c + 1]
        case "strided":
            return rng.standard_normal((2 * r + 1, 2 * c + 1)).astype(dtype)[1::2, ::2][:r, :c]
        case _:
            return rng.standard_normal((3, r, c)).astype(dtype)[1]


LAYOUTS = ("C", "F", "cut", "strided", "row3")


@given(m=st.integers(0, 6), k=st.integers(0, 6), n=st.integers(0, 6),
       la=st.sampled_from(LAYOUTS), lb=st.sampled_from(LAYOUTS),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_gemm_matches_numpy_for_every_layout(m: int, k: int, n: int, la: str, lb: str,
                                             dtype: type, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _view(rng, (m, k), dtype, la), _view(rng, (k, n), dtype, lb)
    want = a.astype(np.float64) @ b.astype(np.float64)
    out = np.full((m, n), np.nan, dtype)
    if "strided" in (la, lb) and m and n and k > 1 and (la == "strided" and m > 1
                                                        or lb == "strided" and n > 1):
        with pytest.raises(ValueError, match="unit-stride"):  # callers make such copies
            blas.gemm(a, b, out)
        return
    blas.gemm(a, b, out)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(blas.matmul(a, b), want, rtol=tol, atol=tol)


def test_gemm_writes_into_a_view_with_unit_stride_rows() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    wide = np.zeros((4, 9))
    blas.gemm(a, b, wide[:, 2:7])
    np.testing.assert_allclose(wide[:, 2:7], a @ b, rtol=1e-12)
    assert not wide[:, :2].any() and not wide[:, 7:].any()


def test_gemm_rejects_mismatched_shapes_and_outputs_without_unit_stride_rows() -> None:
    with pytest.raises(ValueError, match="shapes"):
        blas.gemm(np.ones((2, 3)), np.ones((4, 2)), np.empty((2, 2)))
    with pytest.raises(ValueError, match="unit-stride"):
        blas.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((2, 2)).T)


def test_compiled_callers_load_from_the_cache_in_a_new_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A function calling gemm is cached (no "cannot cache" warning: no address is baked in)
    and the next process loads it instead of compiling, also when that process binds the
    other library (SciPy's 32-bit-integer OpenBLAS behind the narrowing function)."""
    mod = tmp_path / "use_gemm.py"
    mod.write_text(textwrap.dedent("""
        import numpy as np
        from numba import njit
        from rnnlang.codegen.blas import gemm

        @njit(cache=True)
        def f(a, b):
            out = np.empty((a.shape[0], b.shape[1]), a.dtype)
            gemm(a, b, out)
            return out
    """))
    script = textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        warnings.simplefilter("error")
        import numpy as np
        import use_gemm
        from rnnlang.codegen import blas
        rng = np.random.default_rng(0)
        for dt in (np.float32, np.float64):
            a, b = rng.standard_normal((5, 7)).astype(dt), rng.standard_normal((4, 7)).astype(dt)
            assert np.allclose(use_gemm.f(a, b.T), a @ b.T, rtol=1e-5)
        print(len(use_gemm.f.stats.cache_hits), blas.LIBRARY is None)
    """)
    import os
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "nb")}
    env.pop("RNNLANG_BLAS", None)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**env, **extra}, timeout=300, check=False)
            for extra in ({}, {"RNNLANG_BLAS": "scipy"})]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout.split()[0] == "0"
    assert runs[1].stdout.split() == ["2", "True"]  # cached: one signature per dtype


def test_legacy_names_stay_bound_to_scipys_32_bit_routines() -> None:
    """Code an earlier rnnlang cached calls ``rnnlang_sgemm`` with 32-bit integers: the name
    must stay bound (LLVM aborts on an unresolved symbol) to SciPy's routine itself."""
    import llvmlite.binding as llvm
    capi = blas._cython_blas().__pyx_capi__
    for routine, symbol in blas.LEGACY.items():
        assert llvm.address_of_symbol(symbol) == blas._capsule_pointer(capi[routine])
        assert llvm.address_of_symbol(blas.SYMBOLS[routine]) not in (None, 0)


def test_select_switches_the_library_and_both_compute_the_product() -> None:
    """With NumPy's OpenBLAS bound, `select` points the dispatcher at SciPy's (narrowed to its
    32-bit integers) for threaded calls and back; both give NumPy's product."""
    if not blas._CHOICE:
        pytest.skip("NumPy's OpenBLAS not found here: SciPy's serves every call")
    rng = np.random.default_rng(3)
    try:
        for threaded in (True, False, True):
            blas.select(threaded)
            for r, addr in blas._CHOICE[threaded].items():
                assert blas._TARGETS[r].value == addr
            for dt in (np.float32, np.float64):
                a, b = rng.standard_normal((6, 9)).astype(dt), rng.standard_normal((5, 9)).astype(dt)
                np.testing.assert_allclose(blas.matmul(a, b.T), a @ b.T, rtol=1e-5, atol=1e-5)
    finally:
        blas.select(False)


def test_scipys_openblas_loads_with_a_short_thread_timeout() -> None:
    """SciPy's OpenBLAS (whole-batch calls' BLAS threads) reads OPENBLAS_THREAD_TIMEOUT when
    it loads: rnnlang sets it for that moment only, so its threads sleep ~1 ms after a call
    instead of spinning ~80 ms on the cores the next call's batch slices need. NumPy's
    library, loaded earlier, and the environment afterwards are left as they were; a value
    the user set is kept. When a program imported SciPy first (``scipy.special`` loads the
    library), the library is made to read it again: the timeout it uses is then the same."""
    probe = textwrap.dedent("""
        import importlib.util, os, sys
        if sys.argv[1] == "scipy-first":
            import scipy.special
        seen = []
        orig = importlib.util.module_from_spec
        def spy(spec):
            if spec.name == "scipy.linalg.cython_blas":
                seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
            return orig(spec)
        importlib.util.module_from_spec = spy
        import rnnlang.codegen.blas as blas
        lib = blas._library_of(blas._capsule_pointer(
            blas._cython_blas().__pyx_capi__["sgemm"]))
        import numpy as np
        import scipy.linalg.blas as sb  # threads started again after the re-read: still right
        a = np.random.default_rng(0).random((400, 400), dtype=np.float32)
        assert np.allclose(sb.sgemm(1.0, a, a), a.astype(float) @ a, rtol=1e-4)
        print(seen, os.environ.get("OPENBLAS_THREAD_TIMEOUT"), blas.THREAD_TIMEOUT,
              lib.openblas_thread_timeout())
    """)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}

    def run(order: str) -> str:
        return subprocess.run([sys.executable, "-c", probe, order], env=env,
                              capture_output=True, text=True, check=True).stdout.split("\n")[-2]

    assert run("rnnlang-first") == "['22'] None 22 22"
    assert run("scipy-first") == "['22'] None 22 22"  # read again: it was 0 (the default)
    env["OPENBLAS_THREAD_TIMEOUT"] = "25"
    assert run("rnnlang-first") == "['25'] 25 22 25"
    assert run("scipy-first") == "['25'] 25 22 25"


def test_gemm_pack_and_pgemm_compile_once_per_dtype_whatever_the_layouts() -> None:
    """Callers pass C, F (transposed weights) and A (strided views) arrays; the bodies see
    only layout "A" (`blas.any_layout`), so a model's cold compile has one specialization
    of each per dtype instead of one per layout combination (2-layer LSTM: 4 of gemm, 3 of
    pgemm, 2 of pack before). Results stay right for every layout."""
    from numba import njit, types

    from rnnlang.codegen import packed

    @njit
    def caller(a, w, out):  # type: ignore[no-untyped-def]
        blas.gemm(a, w, out)
        blas.gemm(a.T.T, w.T.T, out)
        blas.gemm(a[:, ::1], np.ascontiguousarray(w.T).T, out)
        p = packed.pack(w, 8)
        packed.pgemm(a, p, w, out)
        q = packed.pack(np.ascontiguousarray(w.T).T, 8)
        packed.pgemm(a[::1, :], q, w, out)

    rng = np.random.default_rng(3)
    a = rng.random((9, 5), dtype=np.float32)
    w = rng.random((5, 20), dtype=np.float32)
    out = np.zeros((9, 20), np.float32)
    caller(a, w, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ w, rtol=1e-5)
    for fn in (blas._gemm, packed._pgemm, packed._pack):
        layouts = {arg.layout for sig in fn.signatures for arg in sig
                   if hasattr(arg, "layout")}
        assert layouts == {"A"}, (fn, fn.signatures)
        assert not any(isinstance(t, types.Literal) for sig in fn.signatures for t in sig)
        assert len({sig[-1].dtype if hasattr(sig[-1], "dtype") else sig[0].dtype
                    for sig in fn.signatures}) == len(fn.signatures)
