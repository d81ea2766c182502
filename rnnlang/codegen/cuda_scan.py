"""Lowering of one scan to ONE persistent CUDA kernel that loops over time on the device.

Layout (any cell): each block owns a slice of the batch rows and runs every time step for
them; its threads stride over the (row, unit) elements of each stage of the step body, with
``cuda.syncthreads()`` between stages and at the end of each step. Rows never talk to each
other inside a step, so block-level sync is all a step needs and there is no grid sync.
Products inside the step are computed per output element (a thread runs the dot product over
the block's rows of the state). Values of the step body live in registers inside a fused
pointwise stage, in the written (T, B, n) arrays when they are stored at ``t`` anyway, and
otherwise in per-step scratch arrays: (B, n) for per-row values, (blocks, ...) for values
without a batch axis (every block computes its own copy).

Values that reduce over the batch inside the step (a weight gradient that was not hoisted,
``sum_to`` of a per-row value) are per-block partial sums; when they only feed sums over time
(``SumTo``), blocks add them with atomics. Anything else that crosses rows runs the scan on a
single block owning every row, which is always correct.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rnnlang.codegen.cpu import _Fn, _groups, _keep_set
from rnnlang.codegen.cuda import Ctx, Kernels, _signature, cx, decompose, emit_element, scalar
from rnnlang.codegen.scan import _direct_stores
from rnnlang.codegen.writer import CodeWriter
from rnnlang.ir.nodes import ConstRef, Eqn, ScanSpec, Store, SumTo, Var
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import BATCH, Dim


@dataclass(frozen=True)
class Home:
    """Where a body value's elements are: ``base[prefix..., index]`` with ``offset`` added to
    the last index; a tap reads ``alt`` (or zeros when None) where ``cond`` is false."""

    base: str
    prefix: tuple[str, ...] = ()
    offset: str = ""
    cond: str = ""
    alt: Home | None = None
    flat: tuple[str, ...] | None = None  # sizes of a value stored flattened (row-major)

    def at(self, index: list[str]) -> str:
        raw = index
        if self.flat is not None:  # one linear index; the offset adds to it (last stride 1)
            lin = ""
            for k, i in enumerate(index):
                lin = i if k == 0 else f"({lin}) * {self.flat[k]} + {i}"
            index = [lin or "0"]
        if self.offset:
            index = index[:-1] + [f"{index[-1]} + {self.offset}"]
        parts = list(self.prefix) + index
        main = f"{self.base}[{', '.join(parts)}]" if parts else f"{self.base}[0]"
        if not self.cond:
            return main
        other = self.alt.at(raw) if self.alt is not None else "_ZERO"
        return f"({main} if {self.cond} else {other})"

    def sliced(self, off: str) -> Home:
        new = off if not self.offset else f"{self.offset} + {off}"
        alt = self.alt.sliced(off) if self.alt is not None else None
        return replace(self, offset=new, alt=alt)


def batched(shape: tuple[Dim, ...]) -> bool:
    return len(shape) >= 1 and shape[0] == BATCH


# ops linear in the listed operands ("all": every operand): a partial sum stays a partial sum
_LINEAR: dict[str, tuple[int, ...] | str] = {
    "neg": (0,), "identity": (0,), "slice": (0,), "pad": (0,), "sum_to": (0,),
    "div": (0,), "d_tanh": (0,), "d_sigmoid": (0,), "matmul": (0,), "matmul_nt": (0,),
    "mul": (0, 1), "add": "all", "sub": "all", "concat": "all"}


def _partial_ok(x: Eqn, kind: dict[str, str]) -> bool:
    """Whether ``x`` applied to partial sums gives the partial sum of its result: it is linear
    in every partial operand and its other operands are the same in every block."""
    rule = _LINEAR.get(x.op)
    if rule is None:
        return False
    ks = [kind[v.name] if isinstance(v, Var) else "const" for v in x.inputs]
    if rule == "all":
        return all(k == "part" for k in ks)
    parts = [i for i, k in enumerate(ks) if k == "part"]
    return (len(parts) == 1 and parts[0] in rule and  # type: ignore[operator]
            all(k in ("rep", "const") for i, k in enumerate(ks) if i != parts[0]))


def kinds(spec: ScanSpec) -> tuple[dict[str, str], bool]:
    """Per body value: ``row`` (has the batch axis), ``rep`` (no batch axis, the same in every
    block) or ``part`` (a block's partial sum over its rows: a reduction over the batch, or a
    linear function of one). Also whether the scan must run on one block: a partial sum that
    feeds anything but a sum over time or another partial sum."""
    body = spec.body
    kind = {v.name: "row" if batched(v.shape) else "rep" for v in body.inputs}
    single = False
    for x in body.eqns:
        ins = [kind[v.name] for v in x.inputs if isinstance(v, Var)]
        out = x.outputs[0]
        if x.op in ("matmul", "matmul_nt") and kind.get(getattr(x.inputs[1], "name", ""),
                                                         "") == "row":
            single = True  # contracts over the batch axis
        if "part" in ins:  # on one block, a partial sum is the whole sum
            kind[out.name] = "row" if batched(out.shape) else "part"
            if batched(out.shape) or not _partial_ok(x, kind):
                single = True
        elif batched(out.shape):
            kind[out.name] = "row"
        elif x.op in ("matmul_tn", "sum_to") and "row" in ins:
            kind[out.name] = "part"
        else:
            kind[out.name] = "rep"
    for v, ob in zip(body.outputs, spec.out_bind, strict=True):
        if kind[v.name] == "part" and not isinstance(ob, SumTo):
            single = True
    return kind, single


def _concat_in_place(eqns: tuple[Eqn, ...], excluded: set[str]) -> set[str]:
    """Concat parts that their pointwise producers can write straight into the concat's home
    (as the CPU target does): each part is produced by a pointwise op, read by nothing but
    this one concat, and has no home of its own."""
    producers = {x.outputs[0].name for x in eqns if OPS[x.op].pointwise}
    uses: dict[str, int] = {}
    for x in eqns:
        for v in x.inputs:
            if isinstance(v, Var):
                uses[v.name] = uses.get(v.name, 0) + 1
    done: set[str] = set()
    for x in eqns:
        if x.op != "concat":
            continue
        names = [v.name for v in x.inputs if isinstance(v, Var)]
        if len(names) != len(x.inputs) or len(set(names)) != len(names) or any(
                n not in producers or n in excluded or n in done or uses[n] != 1
                for n in names):
            continue
        done.update(names)
    return done


def _time(off: int) -> str:
    return "t" if off == 0 else (f"t + {off}" if off > 0 else f"t - {-off}")


def _in_range(off: int, T: str) -> str:
    return f"t >= {-off}" if off < 0 else f"t + {off} < {T}"


def emit_scan(f: _Fn, ks: Kernels, fn: str, syms: tuple[str, ...], e: Eqn) -> None:
    spec: ScanSpec = e.attr("scan")
    body = spec.body
    w = f.w
    T = f.fresh("T")
    rows = f.fresh("rows")
    grid = f.fresh("grid")
    w.comment(f"{'reverse' if spec.reverse else 'forward'} time loop as one persistent kernel: "
              f"{e.comment or 'scan'}")
    w.line(f"{T} = {f.dim(spec.time)}")
    n_arr = len(spec.arrays)
    arrays = [f.id(v) for v in e.outputs[:n_arr]]
    for j, arr in enumerate(spec.arrays):
        if arr.init is not None:
            w.line(f"{arrays[j]} = K.copy({f.id(e.inputs[arr.init])}, launch)")  # type: ignore
        else:
            w.line(f"{arrays[j]} = K.zeros({f.shape(e.outputs[j].shape)}, launch)")
    extra = e.outputs[n_arr:]
    for v in extra:
        w.line(f"{f.id(v)} = K.zeros({f.shape(v.shape)}, launch)")
    sums = [f.id(v) for v in extra[: spec.n_sums]]
    spills = [f.id(v) for v in extra[spec.n_sums:]]
    kind, single = kinds(spec)
    has_b = "B" in f.syms
    nb = f.syms["B"] if has_b else "1"
    if single or not has_b:
        w.comment("one block owns every row: a value of the step crosses rows")
        w.line(f"{rows} = {nb}")
    else:
        w.line(f"{rows} = launch.rows({nb})")
    w.line(f"{grid} = -(-{nb} // {rows})")

    # where each body value lives
    homes: dict[str, Home] = {}
    for v, b in zip(body.inputs, spec.in_bind, strict=True):
        if isinstance(b, ConstRef):
            homes[v.name] = Home(f.id(e.inputs[b.index]))  # type: ignore[arg-type]
            continue
        src = f.id(e.inputs[b.source[1]]) if b.source[0] == "in" else arrays[  # type: ignore
            b.source[1]]
        if b.offset == 0:
            homes[v.name] = Home(src, ("t",))
        else:
            alt = Home(f.id(e.inputs[b.fallback])) if b.fallback is not None else None  # type: ignore
            homes[v.name] = Home(src, (_time(b.offset),), cond=_in_range(b.offset, T), alt=alt)
    views = {x.outputs[0].name for x in body.eqns if x.op == "slice"}
    direct = _direct_stores(spec, arrays, lambda name: kind[name] == "row")
    for name, arr in direct.items():
        homes[name] = Home(arr, ("t",))
    groups = _groups(body.eqns)
    live = {v.name for v in body.outputs}
    for x in body.eqns:
        if not OPS[x.op].pointwise:
            live.update(v.name for v in x.inputs if isinstance(v, Var))
    keep = _keep_set(body.eqns, groups, live)
    in_place = _concat_in_place(body.eqns, set(homes) | views)
    # per-step values with no other home share two workspaces (fewer kernel arguments):
    # per-row (B, n) values side by side in (B, sum n), the others flattened in (blocks, sum)
    scratch: list[str] = []
    ws_rows, ws_blk = f.fresh("ws_rows"), f.fresh("ws_blocks")
    cols, flat = Dim(), "0"
    layout: list[str] = []
    for x in body.eqns:
        out = x.outputs[0]
        if x.op == "slice" or out.name in homes or out.name in in_place:
            continue
        if out.name in keep or not OPS[x.op].pointwise:
            if kind[out.name] == "row" and len(out.shape) == 2:
                homes[out.name] = Home(ws_rows, offset=f.dim(cols) if cols != Dim() else "")
                layout.append(f"{ws_rows}[:, {f.dim(cols)}:{f.dim(cols + out.shape[1])}] "
                              f"holds {out.name}")
                cols = cols + out.shape[1]
            elif kind[out.name] == "row":  # rare (B, n, m): an array of its own
                scratch.append(f.id(out))
                w.line(f"{f.id(out)} = cuda.device_array({f.shape(out.shape)}, DTYPE)")
                homes[out.name] = Home(f.id(out))
            else:
                dims = tuple(cx(f.dim(d)) for d in out.shape)
                homes[out.name] = Home(ws_blk, ("_blk",), offset="" if flat == "0" else flat,
                                       flat=dims)
                size = " * ".join(dims) or "1"
                layout.append(f"{ws_blk}[block, {flat}:] holds {out.name} {f.shape(out.shape)}"
                              ", flattened")
                flat = size if flat == "0" else f"{flat} + {size}"
    for x in body.eqns:  # producers of in-place concat parts write into the concat's home
        if x.op == "concat" and all(getattr(v, "name", "") in in_place for v in x.inputs):
            off = Dim()
            for v in x.inputs:
                assert isinstance(v, Var)
                base = homes[x.outputs[0].name]
                homes[v.name] = base if off == Dim() else base.sliced(cx(f.dim(off)))
                off = off + v.shape[-1]
    if cols != Dim():
        scratch.append(ws_rows)
        w.line(f"{ws_rows} = cuda.device_array(({nb}, {f.dim(cols)}), DTYPE)")
    if flat != "0":
        scratch.append(ws_blk)
        w.line(f"{ws_blk} = cuda.device_array(({grid}, {flat}), DTYPE)")

    def rows_of(v: Var, axis: int) -> str:
        if axis == 0 and kind.get(v.name) == "row":
            return "range(_r0, _r0 + _nr)"
        return f"range({f.dim(v.shape[axis])})"

    c = Ctx(f, lambda v, index: homes[v.name].at(index), rows_of)
    ins = [f.id(v) for v in e.inputs if isinstance(v, Var)]
    args = _signature(f, ins + [f.id(v) for v in e.outputs] + scratch, syms) + [T, rows]
    name = ks.name(fn, "scan")
    kw = ks.w
    kw.line()
    kw.line()
    kw.line("@cuda.jit(cache=True)")
    with kw.block(f"def {name}({', '.join(args)}):"):
        for text in layout:
            kw.comment(text)
        kw.line("_blk = cuda.blockIdx.x")
        kw.line("_tid = cuda.threadIdx.x")
        kw.line("_nth = cuda.blockDim.x")
        kw.line(f"_r0 = _blk * {rows}")
        kw.line(f"_nr = min({rows}, {nb} - _r0)")
        with kw.block(f"for _s in range({T}):"):
            kw.line(f"t = {T} - 1 - _s" if spec.reverse else "t = _s")
            last = [-1]
            for g in groups:
                x0 = g[0]
                sp = x0.span
                if sp is not None and sp.line != last[0]:
                    last[0] = sp.line
                    kw.comment(f"{sp.source.name.rsplit('/', 1)[-1]}:{sp.line}  "
                               f"{sp.source.line(sp.line).strip()}")
                out = x0.outputs[0]
                if x0.op == "slice":
                    base = x0.inputs[0]
                    assert isinstance(base, Var)
                    start = x0.attr("start")
                    homes[out.name] = homes[base.name] if start == Dim.of(0) else \
                        homes[base.name].sliced(cx(f.dim(start)))
                    kind[out.name] = kind[base.name]
                    continue
                if x0.op == "concat" and all(isinstance(v, Var) and v.name in in_place
                                             for v in x0.inputs):
                    continue  # its parts were written in place
                depth = kw.depth
                idx = _loop(kw, f, out.shape, kind[out.name])
                if OPS[x0.op].pointwise:
                    for x in g:
                        loc = f.id(x.outputs[0].name + "#s")
                        kw.line(f"{loc} = {scalar(c, x, idx)}")
                        c.locals[x.outputs[0].name] = loc
                        if x.outputs[0].name in keep:
                            kw.line(f"{homes[x.outputs[0].name].at(idx)} = {loc}")
                    for x in g:
                        c.locals.pop(x.outputs[0].name, None)
                else:
                    emit_element(c, kw, x0, idx, homes[out.name].at(idx))
                kw.depth = depth
                kw.line("cuda.syncthreads()")
            _stores(kw, f, spec, kind, homes, arrays, sums, spills, direct, T)
            kw.line("cuda.syncthreads()")
    w.line(f"{name}[{grid}, launch.threads]({', '.join(args)})")


def _loop(kw: CodeWriter, f: _Fn, shape: tuple[Dim, ...], kind: str) -> list[str]:
    """Open a loop of this block's threads over the elements of a body value."""
    idx = [f"i{k}" for k in range(len(shape))]
    if kind == "row":
        inner = shape[1:]
        size = " * ".join(cx(f.dim(d)) for d in inner)
        kw.line(f"for _e in range(_tid, _nr{' * ' + size if size else ''}, _nth):")
        kw.depth += 1
        if not inner:
            kw.line("i0 = _r0 + _e")
            return idx
        size = cx(size) if len(inner) > 1 else size
        kw.line(f"i0 = _r0 + _e // {size}")
        decompose(kw, f, f"_e % {size}", inner, idx[1:])
        return idx
    total = " * ".join(cx(f.dim(d)) for d in shape) or "1"
    kw.line(f"for _e in range(_tid, {total}, _nth):")
    kw.depth += 1
    decompose(kw, f, "_e", shape, idx)
    return idx


def _stores(kw: CodeWriter, f: _Fn, spec: ScanSpec, kind: dict[str, str],
            homes: dict[str, Home], arrays: list[str], sums: list[str], spills: list[str],
            direct: dict[str, str], T: str) -> None:
    for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
        k = kind[v.name]
        if isinstance(ob, Store) and direct.get(v.name) == arrays[ob.array] and ob.offset == 0:
            continue
        depth = kw.depth
        once = k == "rep" and (isinstance(ob, SumTo) or ob.accumulate or ob.spill is not None)
        if once:  # every block holds the same value: add it once
            kw.line("if _blk == 0:")
            kw.depth += 1
        idx = _loop(kw, f, v.shape, k)
        val = homes[v.name].at(idx)
        where = ", ".join(idx)
        if isinstance(ob, SumTo):
            if k == "part":
                tgt = where if len(idx) == 1 else f"({where})"  # a 1-D array takes an int
                kw.line(f"cuda.atomic.add({sums[ob.index]}, {tgt if idx else '0'}, {val})")
            else:
                kw.line(f"{sums[ob.index]}[{where or '0'}] += {val}")
        else:
            op = "+=" if ob.accumulate else "="
            target = f"{arrays[ob.array]}[{', '.join([_time(ob.offset)] + idx)}]"
            if ob.offset == 0:
                kw.line(f"{target} {op} {val}")
            else:
                with kw.block(f"if {_in_range(ob.offset, T)}:"):
                    kw.line(f"{target} {op} {val}")
                if ob.spill is not None:
                    with kw.block("else:"):
                        kw.line(f"{spills[ob.spill]}[{where or '0'}] += {val}")
        kw.depth = depth
