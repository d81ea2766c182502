"""Lowering of one scan (forward recurrence or BPTT) to a fused time loop."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from rnnlang.codegen.cpu import (
    _copy_loop,
    _Fn,
    _groups,
    _keep_set,
    _scalar,
    _sum_to,
    _View,
    emit_pointwise_group,
)
from rnnlang.codegen.outline import outline_loop
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import ConstRef, Eqn, ScanSpec, Store, SumTo, Tap, Var
from rnnlang.ir.ops import OPS

_MATERIALIZE = {"matmul": (0,), "matmul_nt": (0,), "matmul_tn": (0, 1)}


def _time(off: int) -> str:
    return "t" if off == 0 else (f"t + {off}" if off > 0 else f"t - {-off}")


def _in_range(off: int, T: str) -> str:
    return f"t >= {-off}" if off < 0 else f"t + {off} < {T}"


def emit_scan(f: _Fn, e: Eqn) -> None:
    spec: ScanSpec = e.attr("scan")
    body = spec.body
    w = f.w
    T = f.fresh("T")
    w.comment(f"{'reverse' if spec.reverse else 'forward'} time loop: "
              f"{e.comment or 'scan'}")
    w.line(f"{T} = {f.dim(spec.time)}")
    arrays = [f.id(e.outputs[j]) for j in range(len(spec.arrays))]
    direct = _direct_stores(spec, arrays)
    full = _fully_written(spec, e, direct, arrays)
    for j, arr in enumerate(spec.arrays):
        o = arrays[j]
        if arr.init is not None:
            init = f.id(e.inputs[arr.init])  # type: ignore[arg-type]
            w.line(f"{o} = {f.copy_of(e.outputs[j].name, init, e.outputs[j].shape)}")
        else:
            kind = "empty" if j in full else "zeros"
            w.line(f"{o} = {f.alloc(e.outputs[j].name, e.outputs[j].shape, kind)}")
    n_arr = len(spec.arrays)
    extra_outs = e.outputs[n_arr:]
    for v in extra_outs:
        w.line(f"{f.id(v)} = {f.alloc(v.name, v.shape, 'zeros')}")
    sums = [f.id(v) for v in extra_outs[: spec.n_sums]]
    spills = [f.id(v) for v in extra_outs[spec.n_sums:]]
    # loop invariants and tap fallbacks
    taps: list[tuple[Var, Tap]] = []
    for v, b in zip(body.inputs, spec.in_bind, strict=True):
        if isinstance(b, ConstRef):
            w.line(f"{f.id(v)} = {f.id(e.inputs[b.index])}")  # type: ignore[arg-type]
        else:
            taps.append((v, b))
    zero_of: dict[int, str] = {}
    # per-step buffers are allocated inside the (outlined) loop function, where np.empty costs
    # about 0.1 us, not by the Python-level code (a workspace call and an argument each,
    # about 1.3 us: a tenth of a small model's call went to them); they are a step's size,
    # too small for reuse across calls to matter
    step_allocs: list[str] = []
    for v, b in taps:
        if b.offset != 0 and b.fallback is None:
            z = f.fresh(f"zero_{v.name}")
            zero_of[id(b)] = z
            step_allocs.append(f"{z} = np.zeros({f.shape(v.shape)}, DTYPE)")
    # storage plan for body values
    outputs = {v.name for v in body.outputs}
    inputs = {v.name for v in body.inputs}
    views = {x.outputs[0].name for x in body.eqns if x.op == "slice"}
    groups = _groups(body.eqns)
    live = set(outputs)
    for x in body.eqns:
        if not OPS[x.op].pointwise:
            live.update(v.name for v in x.inputs if isinstance(v, Var))
    keep = _keep_set(body.eqns, groups, live)
    in_place = _concat_in_place(f, body.eqns, inputs | set(direct) | views)
    keep |= in_place
    through = _through_slices(body.eqns, groups, outputs | set(direct) | in_place)
    unwritten = {x.outputs[0].name for g in through for x in g}
    keep -= unwritten
    for g in through:
        for x in g:
            f.inlined[f.id(x.outputs[0])] = partial(_expression, f, g, x.outputs[0].name)
    scratch: dict[str, str] = {}
    slice_of: dict[str, Eqn] = {}
    for x in body.eqns:
        out = x.outputs[0]
        if x.op == "slice":
            slice_of[out.name] = x
            continue
        if out.name in direct or out.name in in_place or out.name in unwritten:
            continue
        if out.name in keep or not OPS[x.op].pointwise:
            step_allocs.append(f"{f.id(out)} = np.empty({f.shape(out.shape)}, DTYPE)")
    for x in body.eqns:
        for k in _MATERIALIZE.get(x.op, ()):
            a = x.inputs[k]
            if isinstance(a, Var) and a.name in slice_of and a.name not in scratch:
                scratch[a.name] = f.fresh(f"{a.name}_c")
                step_allocs.append(f"{scratch[a.name]} = np.empty({f.shape(a.shape)}, DTYPE)")
    # a loop-invariant right operand of the step's products (h[t-1] @ U, BPTT's d @ U^T) is
    # packed once, before the loop, for the packed-weight kernel (`rnnlang.codegen.packed`);
    # where the products go to BLAS instead, W^T is transposed once there, where a C-ordered
    # copy pays (`kernels.transposed`)
    invariant = {v.name for v, b in zip(body.inputs, spec.in_bind, strict=True)
                 if isinstance(b, ConstRef)}
    # (op, weight) -> (its panels, the operand BLAS takes where the products go there)
    packed: dict[tuple[str, str], tuple[str, str]] = {}
    for x in body.eqns:
        w_op = x.inputs[1] if x.op in ("matmul", "matmul_nt") else None
        if (not isinstance(w_op, Var) or w_op.name not in invariant
                or len(x.outputs[0].shape) != 2):
            continue
        key = (x.op, w_op.name)
        if key in packed:
            continue
        rows = f.dim(x.outputs[0].shape[0])
        if x.op == "matmul":
            panels = f.fresh(f"{w_op.name}_p")
            packed[key] = (panels, f.id(w_op))
            step_allocs.append(f"{panels} = kernels.pack({f.id(w_op)}, {rows})")
        else:
            panels, wt = f.fresh(f"{w_op.name}_T_p"), f.fresh(f"{w_op.name}_T")
            packed[key] = (panels, wt)
            step_allocs.append(f"{panels} = kernels.pack({f.id(w_op)}.T, {rows})")
            step_allocs.append(f"{wt} = kernels.transposed({f.id(w_op)}, {panels})")
    steps = f"range({T} - 1, -1, -1)" if spec.reverse else f"range({T})"
    start = len(w.lines)
    for line in step_allocs:
        w.line(line)
    with w.block(f"for t in {steps}:"):
        for v, b in taps:
            src = (f.id(e.inputs[b.source[1]]) if b.source[0] == "in"  # type: ignore[arg-type]
                   else arrays[b.source[1]])
            if b.offset == 0:
                w.line(f"{f.id(v)} = {src}[t]")
                continue
            fb = zero_of.get(id(b)) or f.id(e.inputs[b.fallback])  # type: ignore[arg-type]
            w.line(f"{f.id(v)} = {src}[{_time(b.offset)}] if {_in_range(b.offset, T)} "
                   f"else {fb}")
        for name, arr in direct.items():
            w.line(f"{f.id(name)} = {arr}[t]")
        last = [-1]
        from rnnlang.codegen.cpu import _echo
        for g in groups:
            _echo(f, g[0], last)
            if any(g is h for h in through):
                w.comment(f"{', '.join(f.id(x.outputs[0]) for x in g)}: computed where "
                          "its slices are read")
            elif OPS[g[0].op].pointwise:
                emit_pointwise_group(f, g, keep)
            else:
                _body_op(f, g[0], scratch, packed)
        _stores(f, spec, arrays, sums, spills, T, direct)
    for name in unwritten:
        f.inlined.pop(f.id(name), None)
    if f.outlined is not None:
        outline_loop(w, start, f"{'reverse' if spec.reverse else 'forward'} time loop: "
                     f"{e.comment or 'scan'}", f.outlined)


def _through_slices(eqns: tuple[Eqn, ...], groups: list[list[Eqn]], excluded: set[str]
                    ) -> list[list[Eqn]]:
    """Pointwise groups whose values the rest of the step reads only through slices, each
    slice read once, by a pointwise equation: their loop and buffer go, and each read of a
    slice computes the group's expression at that index instead. The LSTM's ``x_W + h U + b``,
    split four ways, wrote a (B, 4H) buffer and read it back every step (measured 2026-11-27,
    2-core EPYC, one process alternating code with and without: forward lstm 1.044x at (100,
    32, 128), 1.076x at (100, 64, 512), 1.010x at (1000, 8, 128), 0.981x at (50, 1, 64); gru
    and cifg at (100, 32, 128) 1.12x and 1.16x; training steps within noise). ``excluded``:
    values stored elsewhere (step outputs, direct stores, concat parts)."""
    reads: dict[str, list[Eqn]] = {}
    for x in eqns:
        for v in x.inputs:
            if isinstance(v, Var):
                reads.setdefault(v.name, []).append(x)
    out = []
    for g in groups:
        if not OPS[g[0].op].pointwise:
            continue
        mine = {id(x) for x in g}
        sliced = False
        ok = True
        for x in g:
            name = x.outputs[0].name
            ok = ok and name not in excluded
            for user in reads.get(name, []):
                if id(user) in mine:
                    continue
                part = user.outputs[0].name
                readers = reads.get(part, [])
                # read once, by a pointwise equation of the slice's own shape (the read's
                # index is then the slice's: no broadcasting between them)
                ok = ok and user.op == "slice" and part not in excluded and len(
                    readers) == 1 and OPS[readers[0].op].pointwise and (
                    readers[0].outputs[0].shape == user.outputs[0].shape)
                sliced = True
        if ok and sliced:
            out.append(g)
    return out


def _expression(f: _Fn, group: list[Eqn], name: str, idx: list[str]) -> str:
    """Value ``name`` of a `_through_slices` group at index ``idx``, as one expression."""
    made = []
    for x in group:
        out = x.outputs[0].name
        f.locals[out] = f"({_scalar(f, x, idx)})"
        made.append(out)
        if out == name:
            break
    expr = f.locals[name]
    for out in made:
        del f.locals[out]
    return expr


def _direct_stores(spec: ScanSpec, arrays: list[str],
                   allowed: Callable[[str], bool] = lambda _name: True) -> dict[str, str]:
    """Body outputs the loop computes straight into a written array's current step (body
    value name -> array): a set at t, or the only add into a zero-initialized array at t;
    ``allowed`` narrows the candidates (the CUDA target: per-row values only)."""
    body = spec.body
    inputs = {v.name for v in body.inputs}
    views = {x.outputs[0].name for x in body.eqns if x.op == "slice"}
    stores_per_array: dict[int, int] = {}
    for ob in spec.out_bind:
        if isinstance(ob, Store):
            stores_per_array[ob.array] = stores_per_array.get(ob.array, 0) + 1
    direct: dict[str, str] = {}
    for v, ob in zip(body.outputs, spec.out_bind, strict=True):
        sole_add = (isinstance(ob, Store) and ob.accumulate and ob.offset == 0 and
                    spec.arrays[ob.array].init is None and stores_per_array[ob.array] == 1)
        if (isinstance(ob, Store) and (not ob.accumulate or sole_add) and ob.offset == 0 and
                v.name not in inputs and v.name not in direct and v.name not in views and
                allowed(v.name)):
            direct[v.name] = arrays[ob.array]
    return direct


def _fully_written(spec: ScanSpec, e: Eqn, direct: dict[str, str], arrays: list[str]
                   ) -> set[int]:
    """Written arrays that every step sets in full before anything reads them, so they need
    no zeroing first: each store sets the current step (or is the only add into it, which
    `_direct_stores` turns into a set), nothing reads the current or a later step, one step
    per row of the array. Zeroing them was a memory pass each: 5-7% of an LSTM or GRU
    training step at (100, 32, 128) and (100, 64, 512)."""
    sets: dict[int, bool] = {}
    for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
        if isinstance(ob, Store):
            setting = ob.offset == 0 and (not ob.accumulate or direct.get(v.name) == arrays[
                ob.array])
            sets[ob.array] = sets.get(ob.array, True) and setting
    ahead = {b.source[1] for b in spec.in_bind if isinstance(b, Tap) and b.source[0] == "out"
             and (b.offset == 0 or (b.offset > 0) != spec.reverse)}
    return {j for j, ok in sets.items()
            if ok and spec.arrays[j].init is None and j not in ahead
            and e.outputs[j].shape[0] == spec.time}


def _concat_in_place(f: _Fn, eqns: tuple[Eqn, ...], excluded: set[str]) -> set[str]:
    """Let pointwise producers write straight into a concat's buffer (no copy)."""
    producers = {x.outputs[0].name for x in eqns if OPS[x.op].pointwise}
    excluded = excluded | {v.name for x in eqns if not OPS[x.op].pointwise and x.op != "concat"
                           for v in x.inputs if isinstance(v, Var)}
    done: set[str] = set()
    for x in eqns:
        if x.op != "concat":
            continue
        names = [v.name for v in x.inputs if isinstance(v, Var)]
        if len(names) != len(x.inputs) or len(set(names)) != len(names) or any(
                n not in producers or n in excluded or n in done for n in names):
            continue
        offset = "0"
        for v in x.inputs:
            assert isinstance(v, Var)
            f.views[v.name] = _View(f.id(x.outputs[0]), offset)
            offset = f.dim(v.shape[-1]) if offset == "0" else f"{offset} + {f.dim(v.shape[-1])}"
            done.add(v.name)
    return done


def _body_op(f: _Fn, e: Eqn, scratch: dict[str, str],
             packed: dict[tuple[str, str], tuple[str, str]]) -> None:
    out = e.outputs[0]
    o = f.id(out)
    a = dict(e.attrs)
    if e.op == "slice":
        base = e.inputs[0]
        assert isinstance(base, Var)
        off = f.dim(a["start"])
        if base.name in f.views:
            outer = f.views[base.name]
            f.views[out.name] = _View(outer.base, f"{outer.offset} + {off}")
        else:
            f.views[out.name] = _View(f.id(base), off)
        return
    ins = []
    for k, x in enumerate(e.inputs):
        if isinstance(x, Var) and x.name in scratch and k in _MATERIALIZE.get(e.op, ()):
            _copy_loop(f, scratch[x.name], x)
            ins.append(scratch[x.name])
        else:
            ins.append(f.id(x) if isinstance(x, Var) else repr(x))
    match e.op:
        case "matmul" | "matmul_nt" if (isinstance(e.inputs[1], Var)
                                          and (e.op, e.inputs[1].name) in packed):
            panels, w = packed[(e.op, e.inputs[1].name)]
            f.w.line(f"kernels.pgemm({ins[0]}, {panels}, {w}, {o})")
        case "matmul":
            f.w.line(f"kernels.gemm({ins[0]}, {ins[1]}, {o})")
        case "matmul_nt":
            f.w.line(f"kernels.gemm({ins[0]}, {ins[1]}.T, {o})")
        case "matmul_tn":
            f.w.line(f"kernels.gemm({ins[0]}.T, {ins[1]}, {o})")
        case "pad":
            f.w.line(f"{o}[...] = 0.0")
            src = e.inputs[0]
            assert isinstance(src, Var)
            _copy_loop(f, o, src, offset=f.dim(a["start"]))
        case "concat" if all(isinstance(x, Var) and x.name in f.views
                             and f.views[x.name].base == o for x in e.inputs):
            pass  # its parts were written in place (not merely views: slices of another array)
        case "concat":
            start = None
            for x in e.inputs:
                assert isinstance(x, Var)
                _copy_loop(f, o, x, offset=start or "0")
                nxt = x.shape[-1]
                start = f"{start} + {f.dim(nxt)}" if start else f.dim(nxt)
        case "sum_to":
            _sum_to(f, e, o)
        case "zeros":
            f.w.line(f"{o}[...] = 0.0")
        case _:
            raise InternalCompilerError(f"cpu codegen: op '{e.op}' cannot appear in a loop body")


def _stores(f: _Fn, spec: ScanSpec, arrays: list[str], sums: list[str], spills: list[str],
            T: str, direct: dict[str, str]) -> None:
    for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
        if isinstance(ob, SumTo):
            _copy_loop(f, sums[ob.index], v, acc=True)
            continue
        if v.name in direct and arrays[ob.array] == direct[v.name] and ob.offset == 0:
            continue
        when = _time(ob.offset)
        if ob.offset == 0:
            _copy_loop(f, arrays[ob.array], v, ob.accumulate, prefix=when)
            continue
        with f.w.block(f"if {_in_range(ob.offset, T)}:"):
            _copy_loop(f, arrays[ob.array], v, ob.accumulate, prefix=when)
        if ob.spill is not None:
            with f.w.block("else:"):
                _copy_loop(f, spills[ob.spill], v, acc=True)
