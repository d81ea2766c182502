"""CUDA code generator: per program, a host driver that launches a fixed number of kernels.

The driver is plain Python. Each equation outside a scan becomes one launch: products go to the
tiled matmul kernels of ``cuda_kernels`` (one GEMM over every time step), each run of same-shape
pointwise equations becomes one fused elementwise kernel, and every other op (slices, sums,
pooling, reversal, convolution) becomes a generated kernel in which each thread computes whole
output elements. Each scan becomes ONE persistent kernel that loops over time on the device
(``cuda_scan.py``). So a call costs a number of launches that depends on the program, not on T.

Kernels take the same identifiers as the driver's arrays and every size symbol as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rnnlang.codegen.cpu import _Fn, _groups, _keep_set, symbols_of
from rnnlang.codegen.writer import CodeWriter
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import Const, Eqn, Operand, Program, Var
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import Dim

# kernel-local names; identifiers made from user names never start with "_"
KERNEL_LOCALS = {"_e", "_q", "_acc", "_a0", "_a1", "_a2", "_a3", "_k", "_r", "_blk", "_tid",
                 "_nth", "_r0", "_nr", "_s",
                 "_n", "_j", "_m", "_v", "cuda", "K", "launch", "rows"}
_MASKED = {"last", "last_vjp", "mean", "mean_vjp", "reverse"}


@dataclass
class Kernels:
    """Module-level kernel source and a counter for stable kernel names."""

    w: CodeWriter = field(default_factory=CodeWriter)
    count: int = 0

    def name(self, fn: str, what: str) -> str:
        self.count += 1
        return f"{fn}_k{self.count}_{re.sub(r'[^0-9a-zA-Z_]', '_', what)}"


Ref = Callable[[Var, list[str]], str]


@dataclass
class Ctx:
    """How a kernel reads and writes values: ``at(var, index)`` gives an element expression
    for an index over the var's own shape; ``rows(var, axis)`` the range of a reduced axis
    (inside a scan, the batch axis of this block's rows only)."""

    f: _Fn
    at: Ref
    rows: Callable[[Var, int], str]
    locals: dict[str, str] = field(default_factory=dict)


def cx(d: str) -> str:
    """Parenthesize a size expression used in arithmetic."""
    return d if re.fullmatch(r"[\w.]+", d) else f"({d})"


def bcast_index(shape: tuple[Dim, ...], out_shape: tuple[Dim, ...], idx: list[str]) -> list[str]:
    """The index into an operand broadcast (NumPy rules) against an output index."""
    pad = len(out_shape) - len(shape)
    return ["0" if d == Dim.of(1) and out_shape[pad + k] != Dim.of(1) else idx[pad + k]
            for k, d in enumerate(shape)]


def operand(c: Ctx, x: Operand, out_shape: tuple[Dim, ...], idx: list[str]) -> str:
    if isinstance(x, Const):
        return c.f.const(x.value)
    if x.name in c.locals:
        return c.locals[x.name]
    return c.at(x, bcast_index(x.shape, out_shape, idx))


def scalar(c: Ctx, e: Eqn, idx: list[str]) -> str:
    tmpl = OPS[e.op].scalar
    assert tmpl is not None
    return tmpl.format(*[operand(c, x, e.outputs[0].shape, idx) for x in e.inputs])


def decompose(w: CodeWriter, f: _Fn, flat: str, shape: tuple[Dim, ...], idx: list[str]) -> None:
    """Row-major index ``idx`` of element number ``flat`` of ``shape``."""
    if not shape:
        return
    if len(shape) == 1:
        w.line(f"{idx[0]} = {flat}")
        return
    w.line(f"_q = {flat}")
    for k in range(len(shape) - 1, 0, -1):
        n = cx(f.dim(shape[k]))
        w.line(f"{idx[k]} = _q % {n}")
        w.line(f"_q = _q // {n}")
    w.line(f"{idx[0]} = _q")


def size_of(f: _Fn, shape: tuple[Dim, ...]) -> str:
    return " * ".join(cx(f.dim(d)) for d in shape) or "1"


# ---- per-element code of non-pointwise ops (shared by top-level and scan kernels) -----------
def emit_element(c: Ctx, w: CodeWriter, e: Eqn, idx: list[str], out_ref: str) -> None:
    """Lines computing output element ``idx`` of ``e`` into ``out_ref``."""
    f = c.f
    a = dict(e.attrs)
    out = e.outputs[0]
    ins = [x for x in e.inputs if isinstance(x, Var)]
    match e.op:
        case "matmul" | "matmul_nt":
            # four independent accumulators: a serial chain of dependent FMAs is what bounds
            # a thread's dot product (GPU.md); the remainder goes to the first one
            x, wt = ins
            nk = cx(f.dim(x.shape[-1]))

            def term(k: str) -> str:
                wi = [k, idx[-1]] if e.op == "matmul" else [idx[-1], k]
                return f"{c.at(x, idx[:-1] + [k])} * {c.at(wt, wi)}"

            w.line("_a0 = _ZERO")
            w.line("_a1 = _ZERO")
            w.line("_a2 = _ZERO")
            w.line("_a3 = _ZERO")
            with w.block(f"for _k in range(0, {nk} - 3, 4):"):
                w.line(f"_a0 += {term('_k')}")
                for j in (1, 2, 3):
                    w.line(f"_a{j} += {term(f'_k + {j}')}")
            with w.block(f"for _k in range({nk} - {nk} % 4, {nk}):"):
                w.line(f"_a0 += {term('_k')}")
            w.line(f"{out_ref} = (_a0 + _a1) + (_a2 + _a3)")
        case "matmul_tn":
            x, g = ins
            lead = [f"_x{k}" for k in range(len(x.shape) - 1)]
            w.line("_acc = _ZERO")
            depth = w.depth
            for k, nm in enumerate(lead):
                w.line(f"for {nm} in {c.rows(x, k)}:")
                w.depth += 1
            w.line(f"_acc += {c.at(x, lead + [idx[0]])} * {c.at(g, lead + [idx[1]])}")
            w.depth = depth
            w.line(f"{out_ref} = _acc")
        case "sum_to":
            (g,) = ins
            target = out.shape
            pad = len(g.shape) - len(target)
            gi: list[str] = []
            loops: list[tuple[str, int]] = []
            for k in range(len(g.shape)):
                if k < pad or (target[k - pad] == Dim.of(1) and g.shape[k] != Dim.of(1)):
                    gi.append(f"_x{k}")
                    loops.append((f"_x{k}", k))
                else:
                    gi.append(idx[k - pad])
            w.line("_acc = _ZERO")
            depth = w.depth
            for nm, k in loops:
                w.line(f"for {nm} in {c.rows(g, k)}:")
                w.depth += 1
            w.line(f"_acc += {c.at(g, gi)}")
            w.depth = depth
            w.line(f"{out_ref} = _acc")
        case "slice":
            (x,) = ins
            w.line(f"{out_ref} = {c.at(x, idx[:-1] + [idx[-1] + ' + ' + cx(f.dim(a['start']))])}")
        case "pad":
            (x,) = ins
            start, width = cx(f.dim(a["start"])), cx(f.dim(x.shape[-1]))
            with w.block(f"if {start} <= {idx[-1]} < {start} + {width}:"):
                w.line(f"{out_ref} = {c.at(x, idx[:-1] + [idx[-1] + ' - ' + start])}")
            with w.block("else:"):
                w.line(f"{out_ref} = _ZERO")
        case "concat":
            off = "0"
            for n, x in enumerate(e.inputs):
                assert isinstance(x, Var)
                width = cx(f.dim(x.shape[-1]))
                hi = width if off == "0" else f"{off} + {width}"
                j = idx[-1] if off == "0" else f"{idx[-1]} - ({off})"
                last = n == len(e.inputs) - 1
                val = operand(c, x, out.shape[:-1] + (x.shape[-1],), idx[:-1] + [j])
                if last and n == 0:
                    w.line(f"{out_ref} = {val}")
                    break
                head = "else:" if last else (f"if {idx[-1]} < {hi}:" if n == 0 else
                                             f"elif {idx[-1]} < {hi}:")
                with w.block(head):
                    w.line(f"{out_ref} = {val}")
                off = hi
        case "zeros":
            w.line(f"{out_ref} = _ZERO")
        case "repeat":
            (v,) = ins
            w.line(f"{out_ref} = {c.at(v, idx[1:])}")
        case "shift":
            seq = ins[0]
            by = a["by"]
            fb = c.at(ins[1], idx[1:]) if len(ins) == 2 else "_ZERO"
            w.line(f"{out_ref} = {c.at(seq, [f'{idx[0]} - {by}'] + idx[1:])} if {idx[0]} >= "
                   f"{by} else {fb}")
        case "sum_time":
            (s,) = ins
            w.line("_acc = _ZERO")
            with w.block(f"for _r in range({f.dim(s.shape[0])}):"):
                w.line(f"_acc += {c.at(s, ['_r'] + idx)}")
            w.line(f"{out_ref} = _acc")
        case op if op in _MASKED:
            _masked(c, w, e, idx, out_ref)
        case "conv1d" | "conv1d_dx" | "conv1d_dw":
            _conv(c, w, e, idx, out_ref)
        case _:
            raise InternalCompilerError(f"cuda codegen: no lowering for op '{e.op}'")


def _length(c: Ctx, w: CodeWriter, mask: Var, b: str) -> None:
    """``_n``: the length of sequence ``b`` (steps where its mask is set)."""
    w.line("_n = 0")
    with w.block(f"for _r in range({c.f.dim(mask.shape[0])}):"):
        with w.block(f"if {c.at(mask, ['_r', b, '0'])} > _HALF:"):
            w.line("_n += 1")


def _masked(c: Ctx, w: CodeWriter, e: Eqn, idx: list[str], out_ref: str) -> None:
    x, mask = (v for v in e.inputs if isinstance(v, Var))
    if e.op in ("last", "mean"):  # out (B, ...), x (T, B, ...)
        _length(c, w, mask, idx[0])
        if e.op == "last":
            w.line(f"{out_ref} = {c.at(x, ['max(_n - 1, 0)'] + idx)}")
            return
        w.line("_acc = _ZERO")
        with w.block("for _r in range(_n):"):
            w.line(f"_acc += {c.at(x, ['_r'] + idx)}")
        w.line(f"{out_ref} = _acc / DTYPE(max(_n, 1))")
        return
    _length(c, w, mask, idx[1])  # out (T, B, ...)
    if e.op == "last_vjp":
        w.line(f"{out_ref} = {c.at(x, idx[1:])} if {idx[0]} == max(_n - 1, 0) else _ZERO")
    elif e.op == "mean_vjp":
        w.line(f"{out_ref} = {c.at(x, idx[1:])} / DTYPE(max(_n, 1)) if {idx[0]} < _n else _ZERO")
    else:  # reverse
        w.line(f"{out_ref} = {c.at(x, [f'_n - 1 - {idx[0]}'] + idx[1:])} if {idx[0]} < _n "
               "else _ZERO")


def _conv(c: Ctx, w: CodeWriter, e: Eqn, idx: list[str], out_ref: str) -> None:
    f = c.f
    a = dict(e.attrs)
    stride, pad = a["stride"], a["padding"]
    ins = [v for v in e.inputs if isinstance(v, Var)]
    if e.op == "conv1d":  # out[t, b, o] = bias[o] + sum_j,c x[t*stride + j - pad, b, c] w[j, c, o]
        x, wt, bias = ins
        w.line(f"_acc = {c.at(bias, [idx[2]])}")
        with w.block(f"for _j in range({f.dim(wt.shape[0])}):"):
            w.line(f"_s = {idx[0]} * {stride} + _j - {pad}")
            with w.block(f"if 0 <= _s < {f.dim(x.shape[0])}:"):
                with w.block(f"for _k in range({f.dim(x.shape[2])}):"):
                    w.line(f"_acc += {c.at(x, ['_s', idx[1], '_k'])} * "
                           f"{c.at(wt, ['_j', '_k', idx[2]])}")
    elif e.op == "conv1d_dx":  # dx[s, b, c] = sum over t*stride + j - pad == s of g[t] w[j]^T
        g, wt = ins
        w.line("_acc = _ZERO")
        with w.block(f"for _j in range({f.dim(wt.shape[0])}):"):
            w.line(f"_m = {idx[0]} + {pad} - _j")
            with w.block(f"if _m >= 0 and _m % {stride} == 0 and _m // {stride} < "
                         f"{f.dim(g.shape[0])}:"):
                with w.block(f"for _k in range({f.dim(g.shape[2])}):"):
                    w.line(f"_acc += {c.at(g, [f'_m // {stride}', idx[1], '_k'])} * "
                           f"{c.at(wt, ['_j', idx[2], '_k'])}")
    else:  # dw[j, c, o] = sum_t,b x[t*stride + j - pad, b, c] g[t, b, o]
        x, g = ins
        w.line("_acc = _ZERO")
        with w.block(f"for _r in range({f.dim(g.shape[0])}):"):
            w.line(f"_s = _r * {stride} + {idx[0]} - {pad}")
            with w.block(f"if 0 <= _s < {f.dim(x.shape[0])}:"):
                with w.block(f"for _k in range({f.dim(g.shape[1])}):"):
                    w.line(f"_acc += {c.at(x, ['_s', '_k', idx[1]])} * "
                           f"{c.at(g, ['_r', '_k', idx[2]])}")
    w.line(f"{out_ref} = _acc")


# ---- top level --------------------------------------------------------------------------------
def _plain(f: _Fn) -> Ctx:
    def at(v: Var, index: list[str]) -> str:
        return f"{f.id(v)}[{', '.join(index)}]" if index else f"{f.id(v)}[0]"

    return Ctx(f, at, lambda v, k: f"range({f.dim(v.shape[k])})")


def _signature(f: _Fn, arrays: list[str], syms: tuple[str, ...]) -> list[str]:
    seen: list[str] = []
    for a in arrays:
        if a not in seen:
            seen.append(a)
    return seen + [f.syms[s] for s in syms]


def _elementwise_kernel(f: _Fn, ks: Kernels, fn: str, what: str, shape: tuple[Dim, ...],
                        arrays: list[str], syms: tuple[str, ...],
                        body: Callable[[CodeWriter, list[str]], None]) -> str:
    """A grid-stride kernel over the elements of ``shape``; returns its launch line."""
    name = ks.name(fn, what)
    args = _signature(f, arrays, syms)
    kw = ks.w
    kw.line()
    kw.line()
    kw.line("@cuda.jit(cache=True)")
    idx = [f"i{k}" for k in range(len(shape))]
    with kw.block(f"def {name}({', '.join(args)}):"):
        with kw.block(f"for _e in range(cuda.grid(1), {size_of(f, shape)}, cuda.gridsize(1)):"):
            decompose(kw, f, "_e", shape, idx)
            body(kw, idx)
    return f"{name}[launch.grid({size_of(f, shape)}), launch.threads]({', '.join(args)})"


def emit_top(f: _Fn, ks: Kernels, fn: str, syms: tuple[str, ...], eqns: tuple[Eqn, ...],
             live_out: set[str]) -> None:
    w = f.w
    groups = _groups(eqns)
    keep = _keep_set(eqns, groups, live_out)
    c = _plain(f)
    for g in groups:
        e0 = g[0]
        out = e0.outputs[0]
        o = f.id(out)
        if e0.span is not None:
            sp = e0.span
            w.comment(f"{sp.source.name.rsplit('/', 1)[-1]}:{sp.line}  "
                      f"{sp.source.line(sp.line).strip()}")
        if e0.op == "scan":
            from rnnlang.codegen.cuda_scan import emit_scan
            emit_scan(f, ks, fn, syms, e0)
            continue
        if e0.op in ("matmul", "matmul_nt"):
            x, wt = (f.id(v) for v in e0.inputs)  # type: ignore[arg-type]
            w.line(f"{o} = K.matmul({x}, {wt}, {e0.op == 'matmul_nt'}, launch)")
            continue
        if e0.op == "matmul_tn":
            x, gg = (f.id(v) for v in e0.inputs)  # type: ignore[arg-type]
            w.line(f"{o} = K.matmul_tn({x}, {gg}, launch)")
            continue
        if OPS[e0.op].pointwise:
            kept = [x for x in g if x.outputs[0].name in keep]
            for x in kept:
                w.line(f"{f.id(x.outputs[0])} = cuda.device_array({f.shape(x.outputs[0].shape)}, "
                       "DTYPE)")
            reads = [f.id(v) for x in g for v in x.inputs if isinstance(v, Var)
                     and v.name not in {y.outputs[0].name for y in g}]
            arrays = [f.id(x.outputs[0]) for x in kept] + reads

            def body(kw: CodeWriter, idx: list[str], g: list[Eqn] = g) -> None:
                for x in g:
                    loc = f.id(x.outputs[0].name + "#s")
                    kw.line(f"{loc} = {scalar(c, x, idx)}")
                    c.locals[x.outputs[0].name] = loc
                    if x.outputs[0].name in keep:
                        kw.line(f"{c.at(x.outputs[0], idx)} = {loc}")
                for x in g:
                    c.locals.pop(x.outputs[0].name, None)

            w.line(_elementwise_kernel(f, ks, fn, e0.op, out.shape, arrays, syms, body))
            continue
        w.line(f"{o} = cuda.device_array({f.shape(out.shape)}, DTYPE)")
        arrays = [o] + [f.id(v) for v in e0.inputs if isinstance(v, Var)]
        w.line(_elementwise_kernel(
            f, ks, fn, e0.op, out.shape, arrays, syms,
            lambda kw, idx, e0=e0, out=out: emit_element(c, kw, e0, idx, c.at(out, idx))))


def emit_cuda_function(w: CodeWriter, ks: Kernels, fn_name: str, prog: Program, dtype: str,
                       consts: dict[float, str]) -> tuple[str, ...]:
    """Emit ``fn_name(params..., inputs..., dims, launch)`` returning device arrays."""
    f = _Fn(w, dtype=dtype, consts=consts)
    f.taken |= KERNEL_LOCALS
    syms = symbols_of(prog)
    for s in syms:
        f.syms[s] = f.id(f"#size {s}", internal="n_" + re.sub(r"\W", "_", s))
    args = [f.id(v) for v in prog.param_vars + prog.input_vars]
    with w.block(f"def {fn_name}({', '.join(args + ['dims', 'launch'])}):"):
        w.line("K = cuda_kernels.for_dtype(DTYPE, launch.tile)")
        for k, s in enumerate(syms):
            w.line(f"{f.syms[s]} = int(dims[{k}])")
        emit_top(f, ks, fn_name, syms, prog.eqns, {v.name for v in prog.outputs})
        outs = [f.id(v) for v in prog.outputs]
        w.line(f"return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    return syms


# ---- the module -------------------------------------------------------------------------------
# Constants and device helpers of the pointwise templates in ``ir/ops.py``, emitted into each
# module so that they use its dtype: with float32, a bare ``1.0`` would make the arithmetic
# float64 on the GPU.
_NAMED = (("_ZERO", 0.0), ("_ONE", 1.0), ("_HALF", 0.5), ("_THREE", 3.0), ("_SIX", 6.0),
          ("_SIXTH", 1.0 / 6.0), ("_RSQRT2", 0.7071067811865476),
          ("_RSQRT2PI", 0.3989422804014327))
_HELPERS = (
    ("_sigmoid", ["return _ONE / (_ONE + math.exp(-x))  # exp overflow to inf gives 0: right"]),
    ("_softplus", ["return math.log1p(math.exp(-abs(x))) + max(x, _ZERO)"]),
    ("_hard_sigmoid", ["return min(max(x / _SIX + _HALF, _ZERO), _ONE)"]),
    ("_elu", ["return x if x > _ZERO else math.expm1(x)"]),
    ("_gelu", ["return _HALF * x * (_ONE + math.erf(x * _RSQRT2))"]),
    ("_d_gelu", ["return _HALF * (_ONE + math.erf(x * _RSQRT2)) + x * math.exp("
                 "-_HALF * x * x) * _RSQRT2PI"]),
    ("_d_softsign", ["d = _ONE + abs(x)", "return _ONE / (d * d)"]),
    ("_sign", ["return _ONE if x > _ZERO else (-_ONE if x < _ZERO else _ZERO)"]),
)


def emit_cuda_module(programs: dict[str, Program], *, dtype: str, source_name: str,
                     source_text: str, passes: tuple[str, ...]) -> tuple[str, dict[str, tuple[
                         str, ...]]]:
    """Source of the CUDA module and, per driver, the order of its ``dims`` argument."""
    import hashlib

    from rnnlang import __version__

    w = CodeWriter()
    digest = hashlib.sha256(source_text.encode()).hexdigest()[:16]
    w.comment(f"Generated by rnnlang {__version__} from {source_name} (sha256 {digest}).")
    w.comment(f"Passes applied: {', '.join(passes) or 'none'}. Target: cuda, dtype {dtype}.")
    w.comment("Do not edit: regenerate with `rnnc compile --target cuda --emit python`.")
    w.comment("Each driver launches a fixed number of kernels per call, whatever the sequence")
    w.comment("length: every scan is one persistent kernel looping over time on the device.")
    w.line("import math  # noqa: F401")
    w.line()
    w.line("import numpy as np")
    w.line("from numba import cuda")
    w.line()
    w.line("from rnnlang.codegen import cuda_kernels")
    w.line()
    w.line(f"DTYPE = np.{dtype}")
    for name, value in _NAMED:
        w.line(f"{name} = DTYPE({value!r})")
    for name, lines in _HELPERS:
        w.line()
        w.line()
        w.line("@cuda.jit(device=True, inline=True)")
        with w.block(f"def {name}(x):"):
            for text in lines:
                w.line(text)
    ks = Kernels()
    drivers = CodeWriter()
    consts: dict[float, str] = {}
    syms = {}
    for name, prog in programs.items():
        drivers.line()
        drivers.line()
        syms[name] = emit_cuda_function(drivers, ks, name, prog, dtype, consts)
    for value, cname in sorted(consts.items(), key=lambda kv: kv[1]):
        w.line(f"{cname} = DTYPE({value!r})")
    w.lines.extend(ks.w.lines)
    w.lines.extend(drivers.lines)
    return w.source(), syms
