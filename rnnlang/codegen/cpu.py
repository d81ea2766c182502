"""CPU code generator: one `@njit` function per program, the time loop inside it.

Scan bodies are lowered to: taps as array views (no copies), matmuls as BLAS calls into
buffers allocated before the loop, slices as index offsets, and each run of pointwise
equations of one shape as a single fused loop nest over (batch, features) whose temporaries
stay in registers unless something outside the run reads them. Nothing is allocated inside
the time loop.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rnnlang.codegen.outline import Outlined, outline_loop
from rnnlang.codegen.workspace import RESIDUAL_SLOTS
from rnnlang.codegen.writer import CodeWriter
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import (
    Const,
    ConstRef,
    Eqn,
    Operand,
    Program,
    ScanSpec,
    Store,
    SumTo,
    Tap,
    Var,
)
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import Dim

RESERVED = {"np", "math", "kernels", "njit", "DTYPE", "dims", "ws", "t", "range", "min", "max",
            "abs", "len", "float", "int", "tuple", "print", "forward", "forward_train", "backward",
            "__debug__", "True", "False", "None"} | {f"i{k}" for k in range(8)}
# Module-level names of generated code (constants K_..., helpers _..., sizes n_...) use these
# prefixes; identifiers derived from user names never start with them.
_INTERNAL_PREFIXES = ("_", "K_", "n_")
_TOP_KERNELS = {"last": "kernels.last", "mean": "kernels.mean", "sum_time": "kernels.sum_time"}
# sequence-sized results, written into zeros the generated code allocates
_INTO_KERNELS = {"last_vjp": "kernels.last_vjp", "mean_vjp": "kernels.mean_vjp",
                 "reverse": "kernels.reverse"}


def symbols_of(prog: Program) -> tuple[str, ...]:
    """Every size symbol a program's code needs, in the order of its ``dims`` argument."""
    found: set[str] = set()

    def dims_in(x: object) -> None:
        if isinstance(x, Dim):
            found.update(x.symbols)
        elif isinstance(x, tuple):
            for y in x:
                dims_in(y)

    def scan(eqns: tuple[Eqn, ...]) -> None:
        for e in eqns:
            for v in tuple(e.outputs) + tuple(x for x in e.inputs if isinstance(x, Var)):
                dims_in(v.shape)
            for _k, a in e.attrs:
                if isinstance(a, ScanSpec):
                    dims_in(a.time)
                    for v in a.body.inputs:
                        dims_in(v.shape)
                    scan(a.body.eqns)
                else:
                    dims_in(a)

    for v in prog.input_vars + prog.param_vars + prog.outputs:
        dims_in(v.shape)
    scan(prog.eqns)
    return tuple(sorted(found))


@dataclass
class _View:
    base: str
    offset: str  # added to the last index


@dataclass
class _Fn:
    """Per-function naming state: IR names -> safe Python identifiers."""

    w: CodeWriter
    idents: dict[str, str] = field(default_factory=dict)
    taken: set[str] = field(default_factory=lambda: set(RESERVED))
    syms: dict[str, str] = field(default_factory=dict)
    views: dict[str, _View] = field(default_factory=dict)
    # arrays never written: a load at an index is their value's expression there (scan.py)
    inlined: dict[str, Callable[[list[str]], str]] = field(default_factory=dict)
    locals: dict[str, str] = field(default_factory=dict)  # scalar temporaries in a fused loop
    dtype: str = "float64"
    consts: dict[float, str] = field(default_factory=dict)  # module-level typed constants
    outlined: Outlined | None = None  # time loops moved into shared functions (None: inline)
    handed: frozenset[str] = frozenset()  # IR names returned to the caller: NumPy's own arrays
    kept: frozenset[str] = frozenset()  # residuals: returned, read by backward, then dropped
    scratch: list[int] = field(default_factory=list)  # estimated sizes, by placeholder
    residuals: int = 0  # residual slots taken so far

    def _slot(self, name: str, shape: tuple[Dim, ...]) -> str:
        """A workspace slot: for a residual, one that lives until backward has run; else
        scratch, free again when the function returns and shared by the model's functions.
        Scratch slots are numbered by size, largest first (`number_scratch_slots`), so that
        the big arrays of forward_train and of backward share buffers."""
        if name in self.kept:
            self.residuals += 1
            return str(RESIDUAL_SLOTS + self.residuals - 1)
        est = 1
        for d in shape:  # every size taken as 64: ranks (T, B, 4H) above (T, B, H) above (B, H)
            est *= max(1, d.const + 64 * sum(k for _, k in d.terms))
        self.scratch.append(est)
        return f"@slot{len(self.scratch) - 1}@"

    def alloc(self, name: str, shape: tuple[Dim, ...], kind: str = "empty") -> str:
        """The expression allocating IR value ``name``: from the caller's workspace
        (`rnnlang.codegen.workspace`, reused across calls) unless it is handed back."""
        if name in self.handed:
            return f"np.{kind}({self.shape(shape)}, DTYPE)"
        return f"ws.{kind}({self._slot(name, shape)}, {self.shape(shape)}, DTYPE)"

    def copy_of(self, name: str, src: str, shape: tuple[Dim, ...]) -> str:
        if name in self.handed:
            return f"{src}.copy()"
        return f"ws.copy({self._slot(name, shape)}, {src})"

    def number_scratch_slots(self, lines: list[str]) -> list[str]:
        order = sorted(range(len(self.scratch)), key=lambda k: (-self.scratch[k], k))
        rank = {f"@slot{k}@": str(r) for r, k in enumerate(order)}
        return [_PLACEHOLDER.sub(lambda mt: rank.get(mt.group(0), mt.group(0)), line)
                for line in lines]

    def const(self, value: float) -> str:
        """A module-level constant of the program's dtype, so float32 code stays float32."""
        v = float(value)
        if v not in self.consts:
            text = repr(v).replace("-", "m").replace(".", "_").replace("+", "")
            self.consts[v] = f"K_{text}"
        return self.consts[v]

    def id(self, v: Var | str, internal: str | None = None) -> str:
        """The identifier for an IR name; ``internal`` gives a compiler-chosen base instead."""
        name = v if isinstance(v, str) else v.name
        if name not in self.idents:
            base = internal if internal is not None else re.sub(r"\W", "_", name)
            if internal is None and (not base or base[0].isdigit() or keyword.iskeyword(base)
                                     or base.startswith(_INTERNAL_PREFIXES)):
                base = "v_" + base
            ident, k = base, 1
            while ident in self.taken:
                ident, k = f"{base}_{k}", k + 1
            self.taken.add(ident)
            self.idents[name] = ident
        return self.idents[name]

    def fresh(self, hint: str) -> str:
        return self.id(f"{hint}#{len(self.idents)}", internal=re.sub(r"\W", "_", hint))

    def dim(self, d: Dim) -> str:
        parts = []
        for n, k in d.terms:
            s = self.syms[n]
            parts.append(s if k == 1 else f"{k} * {s}")
        if d.const or not parts:
            parts.append(str(d.const))
        return " + ".join(parts).replace("+ -", "- ")

    def shape(self, shape: tuple[Dim, ...]) -> str:
        items = [self.dim(d) for d in shape]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


# ---- pointwise expressions ------------------------------------------------------------------
_FLOAT32_FUNCS = (("math.tanh(", "_tanh32("), ("_sigmoid(", "_sigmoid32("))


def _lvalue(f: _Fn, v: Var, idx: list[str]) -> str:
    if v.name in f.views:
        view = f.views[v.name]
        return f"{view.base}[{', '.join(idx[:-1] + [f'{view.offset} + {idx[-1]}'])}]"
    return f"{f.id(v)}[{', '.join(idx)}]"


def _ref(f: _Fn, x: Operand, out_shape: tuple[Dim, ...], idx: list[str]) -> str:
    if isinstance(x, Const):
        return f.const(x.value)
    if x.name in f.locals:
        return f.locals[x.name]
    if x.name in f.views:
        view = f.views[x.name]
        at = idx[:-1] + [f"{view.offset} + {idx[-1]}"]
        if view.base in f.inlined:
            return f.inlined[view.base](at)
        return f"{view.base}[{', '.join(at)}]"
    shape = x.shape
    pad = len(out_shape) - len(shape)
    parts = []
    for k, d in enumerate(shape):
        od = out_shape[pad + k]
        parts.append("0" if d == Dim.of(1) and od != Dim.of(1) else idx[pad + k])
    return f"{f.id(x)}[{', '.join(parts)}]" if parts else f.id(x)


def _scalar(f: _Fn, e: Eqn, idx: list[str]) -> str:
    tmpl = OPS[e.op].scalar
    assert tmpl is not None
    if f.dtype == "float32":
        for a, b in _FLOAT32_FUNCS:
            tmpl = tmpl.replace(a, b)
    args = [_ref(f, x, e.outputs[0].shape, idx) for x in e.inputs]
    return tmpl.format(*args)


def emit_pointwise_group(f: _Fn, group: list[Eqn], keep: set[str]) -> None:
    """One loop nest for a run of same-shape pointwise equations."""
    shape = group[0].outputs[0].shape
    idx = [f"i{k}" for k in range(len(shape))]
    depth = f.w.depth
    for k, d in enumerate(shape):
        f.w.line(f"for {idx[k]} in range({f.dim(d)}):")
        f.w.depth += 1
    for e in group:
        out = e.outputs[0]
        expr = _scalar(f, e, idx)
        local = f.id(out.name + "#s")  # a reserved name: never collides with an array
        f.w.line(f"{local} = {expr}")
        f.locals[out.name] = local
        if out.name in keep:
            f.w.line(f"{_lvalue(f, out, idx)} = {local}")
    f.w.depth = depth
    for e in group:
        f.locals.pop(e.outputs[0].name, None)


def _groups(eqns: tuple[Eqn, ...]) -> list[list[Eqn]]:
    out: list[list[Eqn]] = []
    for e in eqns:
        pw = OPS[e.op].pointwise
        if pw and out and OPS[out[-1][0].op].pointwise and out[-1][0].outputs[0].shape == \
                e.outputs[0].shape:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _uses(eqns: tuple[Eqn, ...]) -> dict[str, set[int]]:
    used: dict[str, set[int]] = {}
    for k, e in enumerate(eqns):
        for x in e.inputs:
            if isinstance(x, Var):
                used.setdefault(x.name, set()).add(k)
    return used


def _keep_set(eqns: tuple[Eqn, ...], groups: list[list[Eqn]], live_out: set[str]) -> set[str]:
    """Values that must be materialized: read outside their fused group, or live out."""
    uses = _uses(eqns)
    pos = {id(e): k for k, e in enumerate(eqns)}
    keep = set(live_out)
    for g in groups:
        inside = {pos[id(e)] for e in g}
        for e in g:
            name = e.outputs[0].name
            if uses.get(name, set()) - inside:
                keep.add(name)
    return keep


# ---- structural ops -------------------------------------------------------------------------
def _copy_loop(f: _Fn, dst: str, src: Var, acc: bool = False, offset: str = "",
               prefix: str = "") -> None:
    """dst[prefix, i..., offset + j] (+)= src[i..., j] as a loop nest (here and in scan
    bodies): an array assigned to a slice would make Numba compile its shape-mismatch error
    path (seconds of string formatting)."""
    idx = [f"i{k}" for k in range(len(src.shape))]
    depth = f.w.depth
    for k, d in enumerate(src.shape):
        f.w.line(f"for {idx[k]} in range({f.dim(d)}):")
        f.w.depth += 1
    didx = idx[:-1] + [f"{offset} + {idx[-1]}"] if offset and idx else idx
    where = ", ".join(([prefix] if prefix else []) + didx)
    f.w.line(f"{dst}[{where}] {'+=' if acc else '='} {_ref(f, src, src.shape, idx)}")
    f.w.depth = depth


def _sum_to(f: _Fn, e: Eqn, out: str) -> None:
    (g,) = e.inputs
    assert isinstance(g, Var)
    target = e.outputs[0].shape
    f.w.line(f"{out}[...] = 0.0" if target else f"{out} = 0.0")
    idx = [f"i{k}" for k in range(len(g.shape))]
    depth = f.w.depth
    for k, d in enumerate(g.shape):
        f.w.line(f"for {idx[k]} in range({f.dim(d)}):")
        f.w.depth += 1
    pad = len(g.shape) - len(target)
    tidx = ["0" if target[k] == Dim.of(1) else idx[pad + k] for k in range(len(target))]
    f.w.line(f"{out}[{', '.join(tidx)}] += {_ref(f, g, g.shape, idx)}")
    f.w.depth = depth


def _slice_index(f: _Fn, rank: int, start: str, stop: str) -> str:
    return ", ".join([":"] * (rank - 1) + [f"{start}:{stop}"])


def emit_top(f: _Fn, e: Eqn) -> None:
    """A whole-tensor (non-scan, non-pointwise) equation at the top level."""
    out = e.outputs[0]
    o = f.id(out)
    a = dict(e.attrs)
    ins = [f.id(x) if isinstance(x, Var) else repr(x) for x in e.inputs]
    rank = len(out.shape)

    def into(alloc: str, call: str) -> None:
        """Allocate ``o``, then ``call`` writing into it: big results come from NumPy or the
        workspace (see kernels.py: Numba's allocator cost a page fault per 4 KiB)."""
        f.w.line(f"{o} = {f.alloc(out.name, out.shape, alloc)}")
        f.w.line(call)

    match e.op:
        case "matmul" if rank == 3:
            into("empty", f"kernels.mm3({ins[0]}, {ins[1]}, {o})")
        case "matmul":
            f.w.line(f"{o} = kernels.mm2({ins[0]}, {ins[1]})")
        case "matmul_nt" if rank == 3:
            into("empty", f"kernels.mm3_nt({ins[0]}, {ins[1]}, {o})")
        case "matmul_nt":
            f.w.line(f"{o} = kernels.mm2_nt({ins[0]}, {ins[1]})")
        case "matmul_tn" if len(e.inputs[0].shape) == 3:
            into("empty", f"kernels.mm3_tn({ins[0]}, {ins[1]}, {o})")
        case "matmul_tn":
            f.w.line(f"{o} = kernels.mm2_tn({ins[0]}, {ins[1]})")
        case "slice":
            sl = _slice_index(f, rank, f.dim(a["start"]), f.dim(a["stop"]))
            f.w.line(f"{o} = np.ascontiguousarray({ins[0]}[{sl}])")
        case "concat":
            f.w.line(f"{o} = np.concatenate(({', '.join(ins)},), axis={rank - 1})")
        case "pad":
            src = e.inputs[0]
            assert isinstance(src, Var)
            f.w.line(f"{o} = {f.alloc(out.name, out.shape, 'zeros')}")
            _copy_loop(f, o, src, offset=f.dim(a["start"]))
        case "sum_to":  # _sum_to zeroes it first
            f.w.line(f"{o} = {f.alloc(out.name, out.shape, 'empty')}")
            _sum_to(f, e, o)
        case "zeros":
            f.w.line(f"{o} = {f.alloc(out.name, out.shape, 'zeros')}")
        case "repeat":
            into("empty", f"kernels.repeat({ins[0]}, {o})")
        case "conv1d":
            into("empty", f"kernels.conv1d({ins[0]}, {ins[1]}, {ins[2]}, {a['stride']}, "
                 f"{a['padding']}, {o})")
        case "conv1d_dx":
            into("zeros", f"kernels.conv1d_dx({ins[0]}, {ins[1]}, {a['stride']}, "
                 f"{a['padding']}, {o})")
        case "conv1d_dw":
            f.w.line(f"{o} = kernels.conv1d_dw({ins[0]}, {ins[1]}, {a['kernel']}, "
                     f"{a['stride']}, {a['padding']})")
        case "shift" if len(ins) == 2:
            into("empty", f"kernels.shift({ins[0]}, {ins[1]}, {a['by']}, {o})")
        case "shift":
            into("zeros", f"kernels.shift0({ins[0]}, {a['by']}, {o})")
        case op if op in _INTO_KERNELS:
            into("zeros", f"{_INTO_KERNELS[op]}({', '.join(ins)}, {o})")
        case op if op in _TOP_KERNELS:
            f.w.line(f"{o} = {_TOP_KERNELS[op]}({', '.join(ins)})")
        case _:
            raise InternalCompilerError(f"cpu codegen: no lowering for op '{e.op}'")


def _echo(f: _Fn, e: Eqn, last: list[int]) -> None:
    """Echo the source equation above its code, once per source line."""
    sp = e.span
    if sp is None or sp.line == last[0]:
        return
    last[0] = sp.line
    text = sp.source.line(sp.line).strip()
    f.w.comment(f"{sp.source.name.rsplit('/', 1)[-1]}:{sp.line}  {text}")


def _outline_tail(f: _Fn, start: int, title: str) -> None:
    """Move the loop nest that ends the code written since ``start`` into a shared jitted
    function (see `emit_function`); a tail that is not one ``for`` statement stays inline."""
    if f.outlined is None:
        return
    head = "    " * f.w.depth + "for "
    for k in range(start, len(f.w.lines)):
        if f.w.lines[k].startswith(head):
            outline_loop(f.w, k, title, f.outlined)
            return


def emit_eqns_top(f: _Fn, eqns: tuple[Eqn, ...], live_out: set[str]) -> None:
    groups = _groups(eqns)
    keep = _keep_set(eqns, groups, live_out)
    last = [-1]
    for g in groups:
        _echo(f, g[0], last)
        start = len(f.w.lines)
        if OPS[g[0].op].pointwise:
            for e in g:
                if e.outputs[0].name in keep:
                    f.w.line(f"{f.id(e.outputs[0])} = "
                             f"{f.alloc(e.outputs[0].name, e.outputs[0].shape)}")
            emit_pointwise_group(f, g, keep)
            _outline_tail(f, start, "pointwise: " + ", ".join(e.op for e in g))
        elif g[0].op == "scan":
            from rnnlang.codegen.scan import emit_scan
            emit_scan(f, g[0])
        else:
            emit_top(f, g[0])
            _outline_tail(f, start, g[0].op)


JIT = '@njit(cache=True, nogil=True, fastmath=kernels.FASTMATH, error_model="numpy")'


_PLACEHOLDER = re.compile(r"@slot\d+@")
_WS_CALL = re.compile(r"\bws\.(empty|zeros)\(\d+, ")
_WS_COPY = re.compile(r"\bws\.copy\(\d+, (\w+)\)")


def emit_function(w: CodeWriter, fn_name: str, prog: Program, dtype: str,
                  consts: dict[float, str], outlined: Outlined | None = None,
                  handed: frozenset[str] | None = None,
                  kept: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Emit ``fn_name(params..., inputs..., dims, ws)``; returns the symbol order of ``dims``.

    ``ws`` is a `rnnlang.codegen.workspace.Workspace`: every array the function allocates
    comes from it except the values named in ``handed`` (default: all outputs), which the
    caller keeps and which NumPy allocates. Values in ``kept`` (forward_train's residuals) take
    slots from `RESIDUAL_SLOTS` on, which the backward function does not touch.

    With ``outlined``, every loop nest (time loops and whole-sequence pointwise loops) becomes
    a call of a shared jitted function collected there, and ``fn_name`` itself stays plain
    Python: allocations and calls. Compiled, it would link every loop and kernel it calls into
    its own LLVM module and optimize and emit them again (measured: a 2-layer LSTM's first
    forward and vjp from 16.4 to 10.3 s of JIT). Where a loop cannot be outlined the whole
    function is jitted as before."""
    f = _Fn(w, dtype=dtype, consts=consts, outlined=outlined,
            handed=frozenset(v.name for v in prog.outputs) if handed is None else handed,
            kept=kept)
    syms = symbols_of(prog)
    for s in syms:
        f.syms[s] = f.id(f"#size {s}", internal="n_" + re.sub(r"\W", "_", s))
    args = [f.id(v) for v in prog.param_vars + prog.input_vars]
    f.w = body = CodeWriter()
    with body.block(f"def {fn_name}({', '.join(args + ['dims', 'ws'])}):"):
        for k, s in enumerate(syms):
            body.line(f"{f.syms[s]} = dims[{k}]")
        emit_eqns_top(f, prog.eqns, {v.name for v in prog.outputs})
        outs = [f.id(v) for v in prog.outputs]
        body.line(f"return ({', '.join(outs)}{',' if len(outs) == 1 else ''})")
    body.lines = f.number_scratch_slots(body.lines)
    if outlined is None or any(line.startswith(("    for ", "    while "))
                               for line in body.lines):
        # a loop that could not be outlined: the whole function is compiled, and compiled
        # code allocates with NumPy's functions (the executor passes no workspace to it)
        w.line(JIT)
        body.lines = [_WS_COPY.sub(r"\1.copy()", _WS_CALL.sub(r"np.\1(", line))
                      for line in body.lines]
        body.lines[0] = body.lines[0].replace(", ws):", "):")
    w.lines.extend(body.lines)
    return syms


__all__ = ["ConstRef", "Store", "SumTo", "Tap", "emit_function", "symbols_of"]
