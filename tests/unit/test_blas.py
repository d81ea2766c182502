"""rnnlang's GEMM binding (`rnnlang.codegen.blas`): every layout generated code can hand it,
against NumPy's matmul; and compiled callers stay cacheable (the BLAS routine is bound by
symbol name, not by address)."""

from __future__ import annotations

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
    and the next process loads it instead of compiling."""
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
        a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
        assert np.allclose(use_gemm.f(a, a.T), a @ a.T)
        print(len(use_gemm.f.stats.cache_hits))
    """)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "nb")}
    import os
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=300, check=False)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout.strip() == "0" and runs[1].stdout.strip() == "1"
