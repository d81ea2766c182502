"""The per-step products of the time loops, with the weight packed once per call.

Why: a time loop multiplies the same weight at every step (``h[t-1] @ U``, BPTT's
``d @ U^T``), and OpenBLAS packs the whole weight into its buffers again at every call: at
(64, 512) @ (512, 2048) that is 4 MB copied per step, and on one thread OpenBLAS reached
65-87 GFLOP/s at the benchmark's per-step shapes with 16 to 64 rows, where its big products
run at ~95 (2-core AMD EPYC, 2026-11-27; docs/performance.md). Here the weight is copied once
per call into panels of ``NR`` columns (`pack`), and a small kernel multiplies by them:
102-116 GFLOP/s on one core at every per-step shape of the benchmark (the same as OpenBLAS at
4 and 8 rows; no faster than it at the hoisted products' shapes, where rows stream from
memory).

The kernel is written directly in LLVM IR with vector types (``<16 x float>``: one AVX-512
register, two AVX ones) and compiled with llvmlite for the host CPU when this module is
imported (about 35 ms, both dtypes). It is registered with LLVM under a fixed name (`SYMBOLS`),
as `rnnlang.codegen.blas` does for BLAS, so Numba's cached code refers to the name. Numba's
own vectorizer was not used: the loop vectorizer does not keep a register tile of C across
the k loop, and the SLP vectorizer, which does, is off in Numba since it miscompiled
(numba#8705).

Calls whose GEMMs run on several BLAS threads (`rnnlang.parallel`'s whole-batch plan) keep
BLAS: this kernel runs on one thread, and two-thread BLAS beat it there. `set_packing` says
which, and `pack` reads it once per loop, so a change made by another thread's call in
between only picks the other, equally correct, path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from rnnlang.codegen.blas import any_layout, gemm

SYMBOLS = {"float32": "rnnlang_spacked", "float64": "rnnlang_dpacked"}
FLAG = "rnnlang_packing"  # a function returning whether loops pack (1) or call BLAS (0)
NR = {"float32": 16, "float64": 8}  # columns per panel: one AVX-512 register
# Fewer rows than this go to BLAS: at (1, 64) @ (64, 256) the kernel took 1.21 us a step and
# OpenBLAS 1.28, while packing took 10 us, more than 50 steps save (2-core EPYC, 2026-11-27).
MIN_ROWS = 4
# Elements of ``a`` per block of rows (1 MiB of float32: half the L2 cache of the EPYC's core),
# so that a tall ``a`` (the hoisted products' T x B rows) is read from memory once, not once
# per panel; the per-step products fit one block.
BLOCK = {"float": 1 << 18, "double": 1 << 17}
_ENGINES: list[object] = []
_FLAG: list[ctypes.c_int64] = []


def _rows_per_tile() -> int:
    """Rows of C held in registers: 8 with AVX-512's 32 vector registers, else 4 (a tile of
    8 x 16 floats needs 16 of AVX2's 16 registers, and would spill)."""
    features = llvm.get_host_cpu_features()
    return 8 if features.get("avx512f", False) else 4


def _loop(b: ir.IRBuilder, name: str, test: Callable[[ir.Value], ir.Value]
          ) -> tuple[ir.PhiInstr, ir.Block, ir.Block]:
    """The head of ``for i = 0; test(i); ...``, with ``b`` left in the body. Returns the
    counter (the caller adds its next value from the body's end and branches to the head),
    the head, and the block after the loop."""
    fn = b.function
    head = fn.append_basic_block(name)
    body = fn.append_basic_block(f"{name}_body")
    out = fn.append_basic_block(f"{name}_end")
    start = b.block
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(ir.IntType(64), name)
    i.add_incoming(ir.Constant(ir.IntType(64), 0), start)
    b.cbranch(test(i), body, out)
    b.position_at_end(body)
    return i, head, out


def _kernel(mod: ir.Module, name: str, fl: ir.Type, nr: int, mr: int) -> None:
    """``c[i, j] = sum_k a[i, k] * bp[j // nr, k, j % nr]`` for i < m, j < n: each panel of
    ``nr`` columns in turn, ``mr`` rows at a time (then 4, 2, 1 for the rest), the rows'
    sums kept in vector registers over the whole k loop. ``a`` and ``c`` have unit-stride
    rows ``lda`` and ``ldc`` apart; the panels are contiguous, padded with zeros."""
    i1, i64 = ir.IntType(1), ir.IntType(64)
    vec = ir.VectorType(fl, nr)
    flp, vecp = fl.as_pointer(), vec.as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i64, i64, i64, flp, i64, flp, flp, i64])
    fn = ir.Function(mod, fnty, name)
    m, n, k, a, lda, bp, c, ldc = fn.args
    for arg in (a, bp, c):
        arg.add_attribute("noalias")
    suffix = f"v{nr}{'f32' if isinstance(fl, ir.FloatType) else 'f64'}"
    fma = ir.Function(mod, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fmuladd.{suffix}")
    store = ir.Function(mod, ir.FunctionType(ir.VoidType(), [vec, vecp, ir.IntType(32),
                                                             ir.VectorType(i1, nr)]),
                        f"llvm.masked.store.{suffix}.p0")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(vec, [0.0] * nr)
    lanes = ir.Constant(ir.VectorType(i64, nr), list(range(nr)))
    c_nr = ir.Constant(i64, nr)
    panels = b.udiv(b.add(n, ir.Constant(i64, nr - 1)), c_nr)

    def splat(builder: ir.IRBuilder, x: ir.Value, ty: ir.Type) -> ir.Value:
        v = builder.insert_element(ir.Constant(ir.VectorType(ty, nr), None), x,
                                   ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), nr),
                                                        [0] * nr))

    # for r0 in range(0, m, mb): blocks of rows whose part of ``a`` stays in the L2 cache
    # (BLOCK elements) while every panel passes over it
    one = ir.Constant(i64, 1)
    per = b.udiv(ir.Constant(i64, BLOCK[str(fl)]), b.select(
        b.icmp_unsigned("==", k, ir.Constant(i64, 0)), one, k))
    per = b.mul(b.udiv(per, ir.Constant(i64, mr)), ir.Constant(i64, mr))
    mb = b.select(b.icmp_unsigned("<", per, ir.Constant(i64, mr)), ir.Constant(i64, mr), per)
    blocks = b.udiv(b.add(m, b.sub(mb, one)), mb)
    blk, blk_head, blk_done = _loop(b, "blk", lambda x: b.icmp_unsigned("<", x, blocks))
    r0 = b.mul(blk, mb)
    m_end = b.add(r0, mb)
    m_end = b.select(b.icmp_unsigned("<", m_end, m), m_end, m)
    # for jp in range(panels)
    jp, head, done = _loop(b, "jp", lambda j: b.icmp_unsigned("<", j, panels))
    col = b.mul(jp, c_nr)
    panel = b.gep(bp, [b.mul(col, k)])  # panels are k x nr each
    width = b.sub(n, col)
    width = b.select(b.icmp_unsigned("<", width, c_nr), width, c_nr)
    mask = b.icmp_unsigned("<", lanes, splat(b, width, i64))
    c_col = b.gep(c, [col])

    def tile(builder: ir.IRBuilder, row: ir.Value, r: int, tag: str) -> ir.IRBuilder:
        """Rows ``row .. row + r`` of this panel; returns the builder after it."""
        a_rows = [builder.gep(a, [builder.mul(builder.add(row, ir.Constant(i64, i)), lda)])
                  for i in range(r)]
        pre = builder.block
        loop = fn.append_basic_block(f"k_{tag}")
        out = fn.append_basic_block(f"store_{tag}")
        builder.cbranch(builder.icmp_unsigned(">", k, ir.Constant(i64, 0)), loop, out)
        builder.position_at_end(loop)
        kk = builder.phi(i64, "kk")
        kk.add_incoming(ir.Constant(i64, 0), pre)
        accs = []
        for i in range(r):
            acc = builder.phi(vec, f"acc{i}")
            acc.add_incoming(zero, pre)
            accs.append(acc)
        bv = builder.load(builder.bitcast(builder.gep(panel, [builder.mul(kk, c_nr)]), vecp),
                          align=4)
        new = []
        for i in range(r):
            av = splat(builder, builder.load(builder.gep(a_rows[i], [kk]), align=4), fl)
            new.append(builder.call(fma, [av, bv, accs[i]]))
        nxt = builder.add(kk, ir.Constant(i64, 1))
        kk.add_incoming(nxt, builder.block)
        for acc, v in zip(accs, new, strict=True):
            acc.add_incoming(v, builder.block)
        builder.cbranch(builder.icmp_unsigned("<", nxt, k), loop, out)
        builder.position_at_end(out)
        results = []
        for i in range(r):
            res = builder.phi(vec, f"res{i}")
            res.add_incoming(zero, pre)
            res.add_incoming(new[i], loop)
            results.append(res)
        for i, res in enumerate(results):
            dst = builder.gep(c_col, [builder.mul(builder.add(row, ir.Constant(i64, i)), ldc)])
            builder.call(store, [res, builder.bitcast(dst, vecp), ir.Constant(ir.IntType(32), 4),
                                 mask])
        return builder

    # for row in range(r0, m_end - mr + 1, mr): whole tiles
    rel, rows, rest = _loop(b, "row", lambda r: b.icmp_unsigned(
        "<=", b.add(b.add(r0, r), ir.Constant(i64, mr)), m_end))
    tile(b, b.add(r0, rel), mr, "full")
    rel.add_incoming(b.add(rel, ir.Constant(i64, mr)), b.block)
    b.branch(rows)
    # the last rows of the block: a tile of 4, 2 and 1 rows as their bits say
    b.position_at_end(rest)
    cur = b.add(r0, rel)
    r = mr // 2
    while r >= 1:
        yes = fn.append_basic_block(f"tail{r}")
        after = fn.append_basic_block(f"after{r}")
        left = b.sub(m_end, cur)
        before = b.block
        b.cbranch(b.icmp_unsigned("!=", b.and_(left, ir.Constant(i64, r)), ir.Constant(i64, 0)),
                  yes, after)
        b.position_at_end(yes)
        tile(b, cur, r, f"tail{r}")
        moved = b.add(cur, ir.Constant(i64, r))
        from_yes = b.block
        b.branch(after)
        b.position_at_end(after)
        merged = b.phi(i64, f"row{r}")
        merged.add_incoming(cur, before)
        merged.add_incoming(moved, from_yes)
        cur = merged
        r //= 2
    jp.add_incoming(b.add(jp, one), b.block)
    b.branch(head)
    b.position_at_end(done)
    blk.add_incoming(b.add(blk, one), b.block)
    b.branch(blk_head)
    b.position_at_end(blk_done)
    b.ret_void()


def _build() -> dict[str, int]:
    """Compile the kernels and the packing flag for this CPU; their addresses by name."""
    mod = ir.Module(name="rnnlang_packed")
    mr = _rows_per_tile()
    _kernel(mod, SYMBOLS["float32"], ir.FloatType(), NR["float32"], mr)
    _kernel(mod, SYMBOLS["float64"], ir.DoubleType(), NR["float64"], mr)
    i64 = ir.IntType(64)
    flag = ir.GlobalVariable(mod, i64, "rnnlang_packing_flag")
    flag.initializer = ir.Constant(i64, 1)
    get = ir.Function(mod, ir.FunctionType(i64, []), FLAG)
    b = ir.IRBuilder(get.append_basic_block())
    b.ret(b.load_atomic(flag, "monotonic", 8))
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llmod = llvm.parse_assembly(str(mod))
    llmod.verify()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                      features=llvm.get_host_cpu_features().flatten(), opt=3)
    engine = llvm.create_mcjit_compiler(llmod, tm)
    engine.finalize_object()
    _ENGINES.append(engine)
    _FLAG.append(ctypes.c_int64.from_address(engine.get_global_value_address(flag.name)))
    return {s: int(engine.get_function_address(s)) for s in (*SYMBOLS.values(), FLAG)}


def bind() -> None:
    """Register the kernels and the flag with LLVM under their names (idempotent)."""
    if _FLAG:
        return
    for symbol, address in _build().items():
        llvm.add_symbol(symbol, address)


bind()


def set_packing(on: bool) -> None:
    """Whether the time loops from now on pack their weights for this module's kernel (one
    thread per call or per batch slice) or call BLAS as they are (calls whose BLAS uses
    several threads)."""
    _FLAG[0].value = 1 if on else 0


@intrinsic
def _packing(typingctx):  # type: ignore[no-untyped-def]
    sig = types.int64()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            FLAG)
        return builder.call(fn, [])

    return sig, codegen


@intrinsic
def _xpacked(typingctx, m, n, k, a, lda, p, c, ldc):  # type: ignore[no-untyped-def]
    """The kernel on the data of arrays ``a``, ``p`` and ``c`` of one float dtype."""
    arrays = (a, p, c)
    if not all(isinstance(x, types.Array) for x in arrays) or len({x.dtype for x in arrays}) != 1:
        return None
    dtype = c.dtype
    if dtype not in (types.float32, types.float64):
        return None
    symbol = SYMBOLS[str(dtype)]
    sig = types.void(m, n, k, a, lda, p, c, ldc)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        flp = context.get_value_type(dtype).as_pointer()
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i64, i64, i64, flp, i64, flp, flp,
                                                            i64]), symbol)
        tys = signature.args

        def data(j: int):  # type: ignore[no-untyped-def]
            arr = context.make_array(tys[j])(context, builder, args[j])
            return builder.bitcast(arr.data, flp)

        def num(j: int):  # type: ignore[no-untyped-def]
            return context.cast(builder, args[j], tys[j], types.int64)

        builder.call(fn, [num(0), num(1), num(2), data(3), num(4), data(5), data(6), num(7)])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, inline="always")
def pack(w, rows):  # type: ignore[no-untyped-def]
    """`_pack` for any layout of ``w``, compiled once per dtype (`blas.any_layout`)."""
    return _pack(any_layout(w), np.int64(rows))  # a literal row count: no specialization


@njit(cache=True, nogil=True, error_model="numpy")
def _pack(w, rows):  # type: ignore[no-untyped-def]
    """The right operand ``w`` (K, N) of a loop's per-step products with ``rows`` rows as
    panels (ceil(N / NR), K, NR), zero-padded; empty when they use BLAS instead: this call's
    BLAS runs on several threads (`set_packing`), or the products have under MIN_ROWS rows.
    ``w`` may be a transposed view (BPTT's U^T): it is read along its unit-stride axis."""
    k, n = w.shape
    if _packing() == 0 or rows < MIN_ROWS:
        return np.empty((0, k, 1), w.dtype)
    nr = 16 if w.itemsize == 4 else 8
    panels = (n + nr - 1) // nr
    p = np.empty((panels, k, nr), w.dtype)
    if n % nr:
        p[panels - 1] = 0
    # two loop nests, each reading along the unit-stride axis: the other order took 5x longer
    # ((512, 2048) stored by rows 3.1 against 0.60 ms; its transpose 0.80 against 0.44). Each
    # reads a C-typed view (ascontiguousarray copies nothing when the array already is), since
    # with ``w``'s layout "A" the strides are unknown and the rows' copy was 3x slower.
    if w.strides[1] <= w.strides[0]:  # stored by rows
        wc = np.ascontiguousarray(w)
        for q in range(panels):
            j0 = q * nr
            width = min(nr, n - j0)
            for kk in range(k):
                for j in range(width):
                    p[q, kk, j] = wc[kk, j0 + j]
    else:
        wt = np.ascontiguousarray(w.T)
        for q in range(panels):
            j0 = q * nr
            width = min(nr, n - j0)
            for j in range(width):
                for kk in range(k):
                    p[q, kk, j] = wt[j0 + j, kk]
    return p


@njit(nogil=True, inline="always")
def pgemm(a, p, w, out):  # type: ignore[no-untyped-def]
    """`_pgemm` for any layouts, compiled once per dtype (`blas.any_layout`)."""
    _pgemm(any_layout(a), any_layout(p), any_layout(w), any_layout(out))


@njit(cache=True, nogil=True, error_model="numpy")
def _pgemm(a, p, w, out):  # type: ignore[no-untyped-def]
    """out[...] = a @ w, by the packed panels ``p = pack(w)`` (or by BLAS when ``p`` is
    empty: `pack` said so, or a has no unit-stride rows or out none)."""
    m, k = a.shape
    n = w.shape[1]
    item = out.itemsize
    if (p.shape[0] == 0 or m * n * k == 0 or (a.strides[1] != item and k > 1)
            or (out.strides[1] != item and n > 1) or p.shape[1] != k
            or p.shape[0] * p.shape[2] < n or out.shape[0] != m or out.shape[1] != n):
        gemm(a, w, out)
        return
    lda = a.strides[0] // item if m > 1 else k
    ldc = out.strides[0] // item if m > 1 else n
    _xpacked(m, n, k, a, lda, p, out, ldc)


__all__ = ["NR", "SYMBOLS", "bind", "pack", "pgemm", "set_packing"]
