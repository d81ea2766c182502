"""GEMM for generated code: SciPy's BLAS ``sgemm``/``dgemm`` called by symbol name.

Why not ``np.dot`` inside ``@njit``: Numba compiles its ``np.dot`` anew for every layout
combination in every process (measured 0.2-0.8 s each, 2-3 s of a 2-layer LSTM's cold compile),
and loads it through ``scipy.linalg``, whose import is a third of a cached start. Here the
BLAS routine is found once per process (SciPy's ``cython_blas`` capsule table, the same
functions Numba would call) and registered with LLVM under a fixed name (``rnnlang_sgemm``),
so compiled code refers to the name, not to an address, and Numba's on-disk cache stays valid
across processes. `gemm` reads strides at run time, so transposed operands and rows cut from a
bigger array go to BLAS as they are, without copies.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

SYMBOLS = {"sgemm": "rnnlang_sgemm", "dgemm": "rnnlang_dgemm"}


def _cython_blas() -> ModuleType:
    """SciPy's ``cython_blas`` extension, without importing all of ``scipy.linalg``."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("scipy")
    paths = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [p for base in paths for p in glob.glob(os.path.join(base, "linalg", "cython_blas.*"))
             if p.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    if not found:  # an unusual SciPy layout: the ordinary import
        import scipy.linalg.cython_blas as mod
        return mod
    loader = importlib.machinery.ExtensionFileLoader(name, found[0])
    mod_spec = importlib.util.spec_from_file_location(name, found[0], loader=loader)
    assert mod_spec is not None
    mod = importlib.util.module_from_spec(mod_spec)
    loader.exec_module(mod)
    return mod


def _capsule_pointer(capsule: object) -> int:
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    ptr = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    if not ptr:
        raise RuntimeError("SciPy's BLAS capsule holds no function")
    return int(ptr)


def bind() -> None:
    """Register SciPy's GEMMs with LLVM under `SYMBOLS` (idempotent)."""
    capi = _cython_blas().__pyx_capi__  # type: ignore[attr-defined]
    for routine, symbol in SYMBOLS.items():
        if not llvm.address_of_symbol(symbol):
            llvm.add_symbol(symbol, _capsule_pointer(capi[routine]))


bind()


@intrinsic
def _xgemm(typingctx, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):  # type: ignore[no-untyped-def]
    """Fortran ``?gemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)`` on the data of arrays
    ``a``, ``b``, ``c`` of one float dtype (ints are int32 for this BLAS): every argument by
    reference, so each scalar goes through a stack slot in the entry block."""
    arrays = (a, b, c)
    if not all(isinstance(x, types.Array) for x in arrays) or len({x.dtype for x in arrays}) != 1:
        return None
    dtype = c.dtype
    if dtype not in (types.float32, types.float64):
        return None
    if not all(isinstance(x, types.Integer) for x in (ta, tb, m, n, k, lda, ldb, ldc)):
        return None
    symbol = SYMBOLS["sgemm" if dtype == types.float32 else "dgemm"]
    sig = types.void(ta, tb, m, n, k, a, lda, b, ldb, c, ldc)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fl = context.get_value_type(dtype)
        i8, i32 = ir.IntType(8), ir.IntType(32)
        flp, i8p, i32p = fl.as_pointer(), i8.as_pointer(), i32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i32p, i32p, i32p, flp, flp, i32p,
                                               flp, i32p, flp, flp, i32p])
        fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
        tys = signature.args

        def slot(k: int, llty, toty):  # type: ignore[no-untyped-def]
            p = cgutils.alloca_once(builder, llty)
            builder.store(context.cast(builder, args[k], tys[k], toty), p)
            return p

        def const(v: float):  # type: ignore[no-untyped-def]
            p = cgutils.alloca_once(builder, fl)
            builder.store(ir.Constant(fl, v), p)
            return p

        def data(k: int):  # type: ignore[no-untyped-def]
            arr = context.make_array(tys[k])(context, builder, args[k])
            return builder.bitcast(arr.data, flp)

        builder.call(fn, [slot(0, i8, types.int8), slot(1, i8, types.int8),
                          slot(2, i32, types.int32), slot(3, i32, types.int32),
                          slot(4, i32, types.int32), const(1.0), data(5),
                          slot(6, i32, types.int32), data(7), slot(8, i32, types.int32),
                          const(0.0), data(9), slot(10, i32, types.int32)])
        return context.get_dummy_value()

    return sig, codegen


_N, _T = 78, 84  # ord("N"), ord("T")

# One small function, no helpers and one raise: each jitted function costs Numba 0.1-0.2 s of
# cold compile per signature before its body counts, and every extra raise and builtin call
# adds to it (a version with five raises and max() of six took 0.72 s, this one ~0.2 s).
@njit(cache=True, nogil=True, error_model="numpy")
def gemm(a, b, out):  # type: ignore[no-untyped-def]
    """out[...] = a @ b for 2-D float arrays of one dtype. Each operand needs one unit-stride
    axis (C order, or a transposed C array); ``out`` needs unit-stride rows (the buffers
    generated code allocates have both). Row-major C = A B is column-major C^T = B^T A^T, so
    BLAS gets b first: trans ``N`` for an operand stored by rows (BLAS sees it transposed),
    ``T`` for one stored by columns."""
    m, k = a.shape
    n = b.shape[1]
    if m * n * k == 0:  # empty arrays have zero strides: no BLAS call, C = 0
        if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError("gemm: shapes do not match")
        for i in range(m):
            for j in range(n):
                out[i, j] = 0
        return
    item = out.itemsize
    a0, a1 = a.strides
    b0, b1 = b.strides
    # stored by rows when the column stride is one item (or there is one column)
    if a1 == item or k == 1:
        ta, lda, bad = _N, a0 // item if m > 1 else k, (a0 < k * item) & (m > 1)
    else:
        ta, lda, bad = _T, a1 // item if k > 1 else m, ((a0 != item) & (m > 1)) | (a1 < m * item)
    if b1 == item or n == 1:
        tb, ldb = _N, b0 // item if k > 1 else n
        bad |= (b0 < n * item) & (k > 1)
    else:
        tb, ldb = _T, b1 // item if n > 1 else k
        bad |= ((b0 != item) & (k > 1)) | (b1 < k * item)
    ldc = out.strides[0] // item if m > 1 else n
    bad |= (b.shape[0] != k) | (out.shape[0] != m) | (out.shape[1] != n) | (ldc < n)
    bad |= ((out.strides[1] != item) & (n > 1)) | ((m | n | k | lda | ldb | ldc) >= 2**31)
    bad |= ((a0 | a1 | b0 | b1) % item != 0) | (a0 < 0) | (a1 < 0) | (b0 < 0) | (b1 < 0)
    if bad:
        raise ValueError("gemm: shapes do not match, or an operand has no unit-stride axis")
    _xgemm(tb, ta, n, m, k, b, max(ldb, 1), a, max(lda, 1), out, max(ldc, 1))


@njit(cache=True, nogil=True, error_model="numpy")
def matmul(a, b):  # type: ignore[no-untyped-def]
    """a @ b into a new C-contiguous array."""
    out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    gemm(a, b, out)
    return out


__all__ = ["SYMBOLS", "bind", "gemm", "matmul"]
