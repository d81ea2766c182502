"""GEMM for generated code: an OpenBLAS ``sgemm``/``dgemm`` called by symbol name.

Why not ``np.dot`` inside ``@njit``: Numba compiles its ``np.dot`` anew for every layout
combination in every process (measured 0.2-0.8 s each, 2-3 s of a 2-layer LSTM's cold compile),
and loads it through ``scipy.linalg``, whose import is a third of a cached start. Here the
BLAS routine is found once per process and registered with LLVM under a fixed name
(``rnnlang_sgemm64``), so compiled code refers to the name, not to an address, and Numba's
on-disk cache stays valid across processes. `gemm` reads strides at run time, so transposed
operands and rows cut from a bigger array go to BLAS as they are, without copies.

Which BLAS: SciPy's (``cython_blas``'s capsule table), and for calls that run on one thread
the OpenBLAS inside NumPy's wheel when there is one (``numpy.libs``), which was faster there
(`select` has the figures). The registered name is a dispatcher that calls whichever `select`
chose. NumPy's takes 64-bit integers, SciPy's 32-bit ones, so the name always stands for the
64-bit interface, and SciPy's routine is reached through a small narrowing function built
here with llvmlite: cached code never depends on which library was found.
``RNNLANG_BLAS=scipy`` makes every call use SciPy's.

The 32-bit names (``rnnlang_sgemm``) stay registered, bound to SciPy's routines: code that an
earlier rnnlang left in Numba's cache calls them, and LLVM aborts the process on a symbol it
cannot resolve (Numba checks only a cached function's own file for staleness, not the files
of the functions it calls).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

SYMBOLS = {"sgemm": "rnnlang_sgemm64", "dgemm": "rnnlang_dgemm64"}  # 64-bit integers
LEGACY = {"sgemm": "rnnlang_sgemm", "dgemm": "rnnlang_dgemm"}  # 32-bit, SciPy's: old caches
LIBRARY: str | None = None  # NumPy's OpenBLAS when one-thread calls use it (limited too)
_ENGINES: list[object] = []  # llvmlite engines holding the narrowing functions and dispatchers


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
    with _thread_timeout():  # module_from_spec loads the library
        mod = importlib.util.module_from_spec(mod_spec)
        loader.exec_module(mod)
    return mod


# SciPy's OpenBLAS runs the GEMMs of whole-batch calls on several threads, and by default its
# threads spin for 2^28 cycles (~80 ms) after each call, holding the cores the next calls'
# batch slices need: at T=100, B=32, H=128 a gru forward in slices took 7.05 ms (median)
# right after whole-batch calls and 3.60 alone, and "auto" times a whole-batch call now and
# then (2-core EPYC, 2026-11-27). 2^22 cycles (~1.3 ms) keeps them awake between the
# per-step products of one call (whole-batch forward 5.00 ms, as with the default; 2^20
# cycles: 7.76) and asleep soon after it (slices 3.64 ms). NumPy's OpenBLAS, loaded before
# rnnlang, keeps its own setting; a user's OPENBLAS_THREAD_TIMEOUT is left as it is.
THREAD_TIMEOUT = "22"


@contextlib.contextmanager
def _thread_timeout() -> Iterator[None]:
    """OPENBLAS_THREAD_TIMEOUT while a library that reads it at load time loads."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        yield
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    try:
        yield
    finally:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT", None)


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]


def _library_of(address: int) -> ctypes.CDLL | None:
    """The loaded shared library holding ``address`` (``dladdr``), or None."""
    try:
        libc = ctypes.CDLL(None)
        info = _DlInfo()
        if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.fname:
            return None
        return ctypes.CDLL(info.fname.decode())  # loaded already: the same handle
    except (OSError, AttributeError):  # pragma: no cover - no dladdr (not glibc/macOS)
        return None


def _shorten_loaded_timeout(sgemm: int) -> None:
    """The same thread timeout when SciPy's OpenBLAS was loaded before rnnlang (a program that
    imported ``scipy.special`` or ``scipy.linalg`` first, as benchmarks/bench_cpu.py did):
    the library read its environment then, so it reads it again (``openblas_read_env``) and
    its threads are stopped (``blas_thread_shutdown_``, what OpenBLAS itself calls before a
    ``fork``); the next threaded call starts them with the new timeout. Measured (2-core
    EPYC, 2026-11-27): with ``scipy.special`` imported first, a (100, 32, 128) LSTM training
    step's whole-batch plan left a core spinning for 100 ms after each call, and "auto" then
    chose it over the batch slices. Only for OpenBLAS builds that export these functions
    (so the variable is still set while rnnlang itself loads the library, `_cython_blas`,
    which needs no exports); a user's OPENBLAS_THREAD_TIMEOUT is kept."""
    lib = None if "OPENBLAS_THREAD_TIMEOUT" in os.environ else _library_of(sgemm)
    try:
        current, read_env, shutdown = (lib.openblas_thread_timeout, lib.openblas_read_env,
                                       lib.blas_thread_shutdown_)
    except AttributeError:  # no library found, another BLAS, or OpenBLAS without these exports
        return
    if current() != int(THREAD_TIMEOUT):
        with _thread_timeout():
            read_env()
        shutdown()


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


def _numpy_openblas() -> tuple[str, dict[str, int]] | None:
    """The 64-bit-integer OpenBLAS inside NumPy's wheel: its path and ?gemm addresses."""
    root = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(root + ".libs", "libscipy_openblas64_*"))
                       + glob.glob(os.path.join(root, ".dylibs", "libscipy_openblas64_*"))):
        try:
            lib = ctypes.CDLL(path)  # NumPy loaded it already: the same handle
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            try:
                found = {r: ctypes.cast(getattr(lib, f"{prefix}{r}_64_"), ctypes.c_void_p).value
                         for r in SYMBOLS}
            except AttributeError:
                continue
            return path, {r: int(a) for r, a in found.items() if a}
    return None


def _build(scipy: dict[str, int]) -> dict[str, tuple[int, int, int]]:
    """Per routine, compiled with llvmlite in a few milliseconds: a function with the
    64-bit-integer ``?gemm`` signature that narrows the integers and calls SciPy's 32-bit one,
    a global holding the routine generated code runs, and the dispatcher that calls it
    (registered under `SYMBOLS`). Returns (narrowing, global, dispatcher) addresses."""
    i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
    shape = ["c", "c", "i", "i", "i", "f", "f", "i", "f", "i", "f", "f", "i"]
    mod = ir.Module(name="rnnlang_blas")
    names = {}
    for routine, target in scipy.items():
        fl = ir.FloatType() if routine == "sgemm" else ir.DoubleType()
        kinds = {"c": i8p, "f": fl.as_pointer()}
        wide = ir.FunctionType(ir.VoidType(), [kinds.get(k, i64.as_pointer()) for k in shape])
        narrow = ir.FunctionType(ir.VoidType(), [kinds.get(k, i32.as_pointer()) for k in shape])
        fn = ir.Function(mod, wide, f"rnnlang_{routine}_narrowing")
        b = ir.IRBuilder(fn.append_basic_block())
        args = []
        for arg, k in zip(fn.args, shape, strict=True):
            if k == "i":
                slot = b.alloca(i32)
                b.store(b.trunc(b.load(arg), i32), slot)
                arg = slot
            args.append(arg)
        b.call(b.inttoptr(ir.Constant(i64, target), narrow.as_pointer()), args)
        b.ret_void()
        slot = ir.GlobalVariable(mod, wide.as_pointer(), f"rnnlang_{routine}_target")
        slot.initializer = fn
        disp = ir.Function(mod, wide, f"rnnlang_{routine}_dispatch")
        b = ir.IRBuilder(disp.append_basic_block())
        b.call(b.load_atomic(slot, "monotonic", 8), list(disp.args))
        b.ret_void()
        names[routine] = (fn.name, slot.name, disp.name)
    llvm.initialize_native_target()  # idempotent; Numba does it only when it first compiles
    llvm.initialize_native_asmprinter()
    llmod = llvm.parse_assembly(str(mod))
    llmod.verify()
    engine = llvm.create_mcjit_compiler(llmod, llvm.Target.from_default_triple()
                                        .create_target_machine())
    engine.finalize_object()
    _ENGINES.append(engine)
    return {r: (int(engine.get_function_address(f)), int(engine.get_global_value_address(g)),
                int(engine.get_function_address(d))) for r, (f, g, d) in names.items()}


_TARGETS: dict[str, ctypes.c_void_p] = {}  # the dispatchers' globals
_CHOICE: dict[bool, dict[str, int]] = {}  # threaded call or not -> routine -> address
_CURRENT: list[bool | None] = [None]


def select(threaded: bool) -> None:
    """Which library the generated code's GEMMs run on from now on: NumPy's for a call on one
    thread, SciPy's for one whose GEMMs use BLAS threads or run on several threads at once.
    Measured in one process, alternating (2-core Xeon, 2026-11-27): single-threaded, NumPy's
    OpenBLAS 0.3.31 made a (T=100, B=32, H=128) LSTM and GRU 5-13% faster than SciPy's 0.3.30;
    but with 2 BLAS threads it made them 1.2-2.2x slower (its workers wake slowly between the
    per-step GEMMs), and it runs concurrent GEMMs one after another (two threads each making
    16x128x512 products: 47 us per pair against 25 us for one). Any choice computes the same
    products, so a call racing another call's choice is only slower, never wrong."""
    if _CURRENT[0] is threaded or not _CHOICE:
        return
    for routine, address in _CHOICE[threaded].items():
        _TARGETS[routine].value = address
    _CURRENT[0] = threaded


def bind() -> None:
    """Register the GEMMs with LLVM under `SYMBOLS` and `LEGACY` (idempotent)."""
    global LIBRARY
    if all(llvm.address_of_symbol(s) for s in (*SYMBOLS.values(), *LEGACY.values())):
        return
    capi = _cython_blas().__pyx_capi__  # type: ignore[attr-defined]
    scipy = {r: _capsule_pointer(capi[r]) for r in SYMBOLS}
    _shorten_loaded_timeout(scipy["sgemm"])
    for routine, symbol in LEGACY.items():
        llvm.add_symbol(symbol, scipy[routine])
    built = _build(scipy)
    for routine, (_narrow, target, dispatch) in built.items():
        _TARGETS[routine] = ctypes.c_void_p.from_address(target)
        llvm.add_symbol(SYMBOLS[routine], dispatch)
    found = None if os.environ.get("RNNLANG_BLAS") == "scipy" else _numpy_openblas()
    if found is not None and len(found[1]) == len(SYMBOLS):
        LIBRARY = found[0]
        _CHOICE[True] = {r: built[r][0] for r in SYMBOLS}
        _CHOICE[False] = found[1]
        select(False)


bind()


@intrinsic
def _xgemm(typingctx, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):  # type: ignore[no-untyped-def]
    """Fortran ``?gemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c, ldc)`` on the data of arrays
    ``a``, ``b``, ``c`` of one float dtype (64-bit ints: see the module docstring): every
    argument by reference, so each scalar goes through a stack slot in the entry block."""
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
        i8, i64 = ir.IntType(8), ir.IntType(64)
        flp, i8p, i64p = fl.as_pointer(), i8.as_pointer(), i64.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i64p, i64p, i64p, flp, flp, i64p,
                                               flp, i64p, flp, flp, i64p])
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
                          slot(2, i64, types.int64), slot(3, i64, types.int64),
                          slot(4, i64, types.int64), const(1.0), data(5),
                          slot(6, i64, types.int64), data(7), slot(8, i64, types.int64),
                          const(0.0), data(9), slot(10, i64, types.int64)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def any_layout(typingctx, arr):  # type: ignore[no-untyped-def]
    """The same array typed with layout "A" (strides read at run time): a function called
    only with such arrays compiles once per dtype, not once per combination of C, F and A
    layouts its callers happen to pass (one per combination: 4 compiles of `gemm`, 3 of
    `packed.pgemm` and 2 of `packed.pack` in a 2-layer LSTM's cold compile, 0.25-0.9 s each).
    Every layout has the same data model, so this is no code at all."""
    if not isinstance(arr, types.Array):
        return None
    sig = arr.copy(layout="A")(arr)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return sig, codegen


_N, _T = 78, 84  # ord("N"), ord("T")


# The public entry points that generated code and the kernels call are wrappers inlined at
# the call site (a call and three casts to re-type there), so the body below compiles for
# layout "A" only: see `any_layout`.
@njit(nogil=True, inline="always")
def gemm(a, b, out):  # type: ignore[no-untyped-def]
    """out[...] = a @ b (see `_gemm`)."""
    _gemm(any_layout(a), any_layout(b), any_layout(out))


# One small function, no helpers and one raise: each jitted function costs Numba 0.1-0.2 s of
# cold compile per signature before its body counts, and every extra raise and builtin call
# adds to it (a version with five raises and max() of six took 0.72 s, this one ~0.2 s).
@njit(cache=True, nogil=True, error_model="numpy")
def _gemm(a, b, out):  # type: ignore[no-untyped-def]
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


__all__ = ["LEGACY", "LIBRARY", "SYMBOLS", "any_layout", "bind", "gemm", "matmul"]
