"""Backpropagation through time, derived from the IR.

`grad_program` walks the program's equations in reverse, accumulating cotangents in a dict.
A forward ``scan`` becomes a reverse-time ``scan`` whose body is the VJP of the forward body:
a state read at ``t-k`` sends its cotangent into an accumulator at ``t-k`` (spilling into the
initial state's gradient before the start), inputs get per-step cotangent arrays, and loop
invariants (weights) are summed over time. Forward-body values the reverse body needs are added
to the forward scan as residual arrays. The result is two ordinary programs (forward with
residual outputs, backward), which go through the same verify, passes and code generator.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rnnlang.autodiff.vjp import vjp
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import (
    Const,
    ConstRef,
    Eqn,
    InputInfo,
    Operand,
    OutArray,
    Program,
    Region,
    ScanSpec,
    Store,
    SumTo,
    Tap,
    Var,
    all_names,
)
from rnnlang.ir.types import BATCH, Dim, TensorType
from rnnlang.lower.builder import Builder, NameGen


@dataclass(frozen=True)
class GradPrograms:
    """``forward`` returns outputs then residuals; ``backward`` maps (inputs, params, residuals,
    output cotangents) to gradients of params then differentiable inputs."""

    forward: Program
    backward: Program
    residuals: tuple[Var, ...]
    cotangents: tuple[Var, ...]
    grads_of: tuple[Var, ...]  # the primal var each backward output is the gradient of


def _names_of(prog: Program) -> NameGen:
    return NameGen(all_names(prog))


class _Cots:
    """Cotangent accumulator: one Var per primal value, summed with ``add``.

    Cotangents of slices (the gates of a ``split``) are kept as pieces and joined with one
    ``concat`` when the whole value is read, instead of zero-padding each and adding.
    """

    def __init__(self, b: Builder):
        self.b = b
        self.ct: dict[str, Var] = {}
        self.pieces: dict[str, list[tuple[Dim, Var]]] = {}
        self.primal: dict[str, Var] = {}

    def add_slice(self, x: Operand, g: Var, start: Dim) -> None:
        if isinstance(x, Const):
            return
        self.primal[x.name] = x
        self.pieces.setdefault(x.name, []).append((start, g))

    def _join(self, x: Var) -> Var | None:
        pieces = sorted(self.pieces.pop(x.name, []), key=lambda p: p[0])
        if not pieces:
            return None
        cursor, parts = Dim(), []
        for start, g in pieces:
            if start != cursor:
                break
            parts.append(g)
            cursor = cursor + g.shape[-1]
        if cursor == x.shape[-1] and len(parts) == len(pieces):
            if len(parts) == 1:
                return parts[0]
            return self.b.emit("concat", tuple(parts), None, f"d_{x.name}")
        total: Var | None = None
        for start, g in pieces:
            pad = self.b.emit("pad", (g,), None, f"d_{x.name}", {"start": start,
                                                                 "total": x.shape[-1]})
            total = pad if total is None else self.b.emit("add", (total, pad), None,
                                                          f"d_{x.name}")
        return total

    def add(self, x: Operand, g: Var | None) -> None:
        if g is None or isinstance(x, Const):
            return
        if g.shape != x.shape:
            raise InternalCompilerError(f"cotangent of {x.name} has shape {g.type}, "
                                        f"expected {x.type}")
        cur = self.ct.get(x.name)
        self.ct[x.name] = g if cur is None else self.b.emit("add", (cur, g), None,
                                                            f"d_{x.name}")

    def get(self, x: Var) -> Var | None:
        if x.name in self.pieces:
            joined = self._join(x)
            cur = self.ct.get(x.name)
            if joined is not None:
                self.ct[x.name] = joined if cur is None else self.b.emit(
                    "add", (cur, joined), None, f"d_{x.name}")
        return self.ct.get(x.name)


def _sweep(eqns: tuple[Eqn, ...], cots: _Cots, b: Builder, fwd_eqns: list[Eqn]) -> None:
    for k in range(len(eqns) - 1, -1, -1):
        e = eqns[k]
        gs = [cots.get(v) for v in e.outputs]
        if all(g is None for g in gs):
            continue
        if e.op == "scan":
            new_fwd, in_cots = _scan_vjp(e, gs, b)
            fwd_eqns[k] = new_fwd
        elif e.op == "slice":
            cots.add_slice(e.inputs[0], gs[0], e.attr("start"))  # type: ignore[arg-type]
            continue
        else:
            in_cots = vjp(b, e, gs[0])  # type: ignore[arg-type]
        for x, g in zip(e.inputs, in_cots, strict=False):
            cots.add(x, g)


def grad_program(prog: Program) -> GradPrograms:
    names = _names_of(prog)
    b = Builder(names)
    cots = _Cots(b)
    seeds = []
    for name, v in zip(prog.output_names, prog.outputs, strict=True):
        g = Var(names.fresh(f"d_{name}"), v.type)
        seeds.append(g)
        cots.add(v, g)
    fwd_eqns = list(prog.eqns)
    _sweep(prog.eqns, cots, b, fwd_eqns)
    wrt = list(prog.param_vars) + [i.var for i in prog.inputs if i.role != "mask"]
    grads = []
    for v in wrt:
        g = cots.get(v)
        if g is None:
            g = b.emit("zeros", (), None, f"d_{v.name}", {"shape": v.shape})
        grads.append(g)
    defined = {v.name for e in b.eqns for v in e.outputs} | {g.name for g in seeds}
    primal = {v.name for v in prog.input_vars + prog.param_vars}
    _recompute_from_params(prog, b, defined)
    residuals: dict[str, Var] = {}
    for e in b.eqns:
        for x in e.inputs:
            if isinstance(x, Var) and x.name not in defined and x.name not in primal:
                residuals[x.name] = x
    fwd = replace(prog, eqns=tuple(fwd_eqns), outputs=prog.outputs + tuple(residuals.values()),
                  output_names=prog.output_names + tuple(f"residual:{n}" for n in residuals))
    bwd_inputs = tuple(prog.inputs) + tuple(InputInfo(v, "residual") for v in residuals.values()) \
        + tuple(InputInfo(g, "cotangent") for g in seeds)
    bwd = replace(prog, name=prog.name + "_bptt", inputs=bwd_inputs, eqns=tuple(b.eqns),
                  outputs=tuple(grads), output_names=tuple(f"d:{v.name}" for v in wrt))
    return GradPrograms(fwd, bwd, tuple(residuals.values()), tuple(seeds), tuple(wrt))


_PARAM_OPS = frozenset({"concat", "slice", "pad", "neg", "identity", "add", "sub", "mul"})


def _recompute_from_params(prog: Program, b: Builder, defined: set[str]) -> None:
    """Values the backward program reads that are cheap rearrangements of parameters (the
    ``[Wf | Wh]`` weight that gate fusion builds) are rebuilt there rather than handed over as
    residuals: parameter-sized storage that would dominate BPTT memory at small sizes."""
    params = {v.name for v in prog.param_vars}
    read = {x.name for e in b.eqns for x in e.inputs if isinstance(x, Var)}
    redo = []
    for e in prog.eqns:
        if (len(e.outputs) == 1 and e.outputs[0].name in read and e.op in _PARAM_OPS
                and e.outputs[0].name not in defined
                and all(isinstance(x, Const) or x.name in params for x in e.inputs)):
            redo.append(e)
            defined.add(e.outputs[0].name)
    b.eqns[:0] = redo


def _scan_vjp(e: Eqn, gs: list[Var | None], top: Builder) -> tuple[Eqn, list[Var | None]]:
    """Reverse scan for forward scan ``e``; returns (forward scan with residuals, input cots)."""
    spec: ScanSpec = e.attr("scan")
    if spec.reverse or spec.n_sums or spec.n_spills:
        raise InternalCompilerError("only forward scans can be differentiated")
    body = spec.body
    rb = Builder(top.names)
    cots = _Cots(rb)
    # seeds: each stored body output gets its array's accumulated cotangent at t
    acc_in: list[Var] = []
    for v, st in zip(body.outputs, spec.out_bind, strict=True):
        assert isinstance(st, Store) and st.offset == 0 and not st.accumulate
        g = rb.var(f"d_{v.name}", v.shape)
        acc_in.append(g)
        cots.add(v, g)
    dummy: list[Eqn] = list(body.eqns)
    _sweep(body.eqns, cots, rb, dummy)
    if any(x.op == "scan" for x in body.eqns):
        raise InternalCompilerError("nested scans are not supported")
    _recompute_invariants(body, rb)
    return _assemble(e, spec, gs, top, rb, cots, acc_in)


def _recompute_invariants(body: Region, rb: Builder) -> None:
    """Values computed from loop invariants only (``v * 2`` of a parameter ``v``) are not
    stored per step: the reverse body recomputes them from the same invariants."""
    producers = {v.name: x for x in body.eqns for v in x.outputs}
    defined = {v.name for x in rb.eqns for v in x.outputs}
    wanted: set[str] = set()
    stack = [v.name for x in rb.eqns for v in x.inputs if isinstance(v, Var)
             and v.name not in defined and v.name in producers
             and v.shape[:1] != (BATCH,)]
    while stack:
        name = stack.pop()
        if name in wanted:
            continue
        wanted.add(name)
        stack.extend(v.name for v in producers[name].inputs
                     if isinstance(v, Var) and v.name in producers)
    if wanted:
        pre = [x for x in body.eqns if x.outputs[0].name in wanted]
        rb.eqns[:0] = pre


# Pointwise ops cheap enough to redo in the reverse body instead of storing their result per
# step (no transcendental functions: those cost more to recompute than to load).
_REMAT_OPS = frozenset({"add", "sub", "mul", "neg", "select", "identity"})


def _economize(body: Region, spec: ScanSpec, rb: Builder, needed: dict[str, Var],
               stored: dict[str, int]) -> dict[str, Var]:
    """Store fewer per-step residuals; returns what the reverse body still reads.

    Two rewrites, both exact:

    * **alias through a select**: a value ``v`` whose only use is ``u = select(m, v, p)``
      with ``u`` stored (a masked state update) is read back from ``u``'s array. Where the
      select picked ``v`` the two are equal; where it picked ``p``, ``v``'s cotangent is exactly
      zero (the select's VJP), and every use of ``v`` in the reverse body is a VJP, linear in
      that cotangent, so the value read there does not matter (it is the finite ``p``).
    * **recompute cheap pointwise values** (``1 - f``, ``1 - z``) in the reverse body from
      values it reads anyway, instead of storing them (the BPTT storage lever of issue 5).
      Matmul operands (mgu's ``f * h[t-1]``) stay stored, so that their weight gradient
      remains one GEMM after the loop.
    """
    consumers: dict[str, list[Eqn]] = {}
    producers: dict[str, Eqn] = {}
    for x in body.eqns:
        for v in x.outputs:
            producers[v.name] = x
        for v in x.inputs:
            if isinstance(v, Var):
                consumers.setdefault(v.name, []).append(x)
    state_taps = {v.name for v, bnd in zip(body.inputs, spec.in_bind, strict=True)
                  if isinstance(bnd, Tap) and bnd.source[0] == "out"}
    body_in = {v.name for v in body.inputs}
    for name in needed:
        if name in body_in or name in stored:  # stored: every body output of a forward scan
            continue
        uses = consumers.get(name, [])
        if len(uses) != 1 or uses[0].op != "select":
            continue
        sel = uses[0]
        m, a, c = sel.inputs
        if (isinstance(m, Var) and m.name == name) or sum(
                isinstance(x, Var) and x.name == name for x in (a, c)) != 1:
            continue
        if sel.outputs[0].name in stored:
            stored[name] = stored[sel.outputs[0].name]
    order = {x.outputs[0].name: k for k, x in enumerate(body.eqns)}
    # a matmul operand stays stored: the weight gradient (operand^T @ cotangent) is then one
    # GEMM over all steps after the loop (hoist_weight_gradients), not a small GEMM per step
    gemm_operands = {v.name for x in body.eqns if x.op == "matmul" for v in x.inputs
                     if isinstance(v, Var)}
    redo: list[Eqn] = []
    changed = True
    while changed:
        changed = False
        for name in list(needed):
            if name in body_in or name in stored or name not in producers:
                continue
            p = producers[name]
            if p.op not in _REMAT_OPS or len(p.outputs) != 1 or name in gemm_operands:
                continue
            ins = [v for v in p.inputs if isinstance(v, Var)]
            if all(v.name != name and (v.name in needed or v.name in stored
                                       or v.name in state_taps) for v in ins):
                redo.append(p)
                del needed[name]
                for v in ins:
                    needed.setdefault(v.name, v)
                changed = True
    if redo:
        rb.eqns[:0] = sorted(redo, key=lambda x: order[x.outputs[0].name])
    return needed


def _assemble(e: Eqn, spec: ScanSpec, gs: list[Var | None], top: Builder, rb: Builder,
              cots: _Cots, acc_in: list[Var]) -> tuple[Eqn, list[Var | None]]:
    body = spec.body
    n_arr = len(spec.arrays)
    # --- which forward-body values does the reverse body read? ------------------------------
    defined = {v.name for x in rb.eqns for v in x.outputs} | {g.name for g in acc_in}
    needed: dict[str, Var] = {}
    for x in rb.eqns:
        for v in x.inputs:
            if isinstance(v, Var) and v.name not in defined:
                needed[v.name] = v
    body_in = {v.name: (v, bnd) for v, bnd in zip(body.inputs, spec.in_bind, strict=True)}
    stored = {v.name: st.array for v, st in zip(body.outputs, spec.out_bind, strict=True)
              if isinstance(st, Store)}
    needed = _economize(body, spec, rb, needed, stored)
    # forward scan gains residual arrays for intermediates
    new_arrays = list(spec.arrays)
    new_outs_body = list(body.outputs)
    new_bind = list(spec.out_bind)
    new_eqn_outs = list(e.outputs)
    for name, v in needed.items():
        if name in body_in or name in stored:
            continue
        if v.shape[:1] != (BATCH,):
            raise InternalCompilerError(f"residual {name} is not per-step")
        stored[name] = len(new_arrays)
        new_arrays.append(OutArray(f"res.{name}"))
        new_outs_body.append(v)
        new_bind.append(Store(len(new_arrays) - 1))
        new_eqn_outs.append(top.var(f"res.{name}", (spec.time,) + v.shape))
    fspec = replace(spec, arrays=tuple(new_arrays),
                    body=replace(body, outputs=tuple(new_outs_body)), out_bind=tuple(new_bind))
    fwd = replace(e, outputs=tuple(new_eqn_outs), attrs=(("scan", fspec),))
    # --- reverse scan operands ----------------------------------------------------------------
    seqs: list[Var] = []
    extras: list[Var] = []

    def seq_index(v: Var) -> int:
        if v not in seqs:
            seqs.append(v)
        return seqs.index(v)

    r_in: list[Var] = []
    r_bind: list[tuple[str, object]] = []  # deferred: resolved once seqs are final
    for name, v in needed.items():
        r_in.append(v)
        if name in body_in:
            _, bnd = body_in[name]
            if isinstance(bnd, ConstRef):
                r_bind.append(("const", e.inputs[bnd.index]))
            else:
                src = e.inputs[bnd.source[1]] if bnd.source[0] == "in" else new_eqn_outs[
                    bnd.source[1]]
                fb = e.inputs[bnd.fallback] if bnd.fallback is not None else None
                r_bind.append(("tap", (seq_index(src), bnd.offset, fb)))  # type: ignore[arg-type]
        else:
            r_bind.append(("tap", (seq_index(new_eqn_outs[stored[name]]), 0, None)))
    # written arrays: accumulators for forward arrays, then input-cotangent arrays
    out_arrays: list[OutArray] = []
    for j in range(n_arr):
        g = gs[j]
        init = None
        if g is not None:
            extras.append(g)
            init = -1 - (len(extras) - 1)  # placeholder: resolved after seqs are known
        out_arrays.append(OutArray(f"acc.{spec.arrays[j].name}", init))
    r_out: list[Var] = []
    r_obind: list[Store | SumTo] = []
    n_sums = 0
    spill_targets: list[Operand] = []
    sum_targets: list[Operand] = []
    dseq_arrays: dict[int, int] = {}
    for v, bnd in zip(body.inputs, spec.in_bind, strict=True):
        g = cots.get(v)
        if g is None:
            continue
        if isinstance(bnd, ConstRef):
            r_out.append(g)
            r_obind.append(SumTo(n_sums))
            n_sums += 1
            sum_targets.append(e.inputs[bnd.index])
            continue
        spill = None
        if bnd.fallback is not None:
            spill = len(spill_targets)
            spill_targets.append(e.inputs[bnd.fallback])
        if bnd.source[0] == "out":
            arr = bnd.source[1]
        else:
            i = bnd.source[1]
            if i not in dseq_arrays:
                dseq_arrays[i] = len(out_arrays)
                out_arrays.append(OutArray(f"d.{e.inputs[i].name}"))
            arr = dseq_arrays[i]
        r_out.append(g)
        r_obind.append(Store(arr, bnd.offset, True, spill))
    # resolve operand indices: seqs first, then extras (acc inits, consts, fallbacks)
    operands: list[Var] = list(seqs)
    in_bind: list[Tap | ConstRef] = []

    def extra_index(v: Operand) -> int:
        assert isinstance(v, Var)
        operands.append(v)
        return len(operands) - 1

    for kind, payload in r_bind:
        if kind == "const":
            in_bind.append(ConstRef(extra_index(payload)))  # type: ignore[arg-type]
        else:
            si, off, fb = payload  # type: ignore[misc]
            in_bind.append(Tap(("in", si), off, None if fb is None else extra_index(fb)))
    for j, g in enumerate(acc_in):
        r_in.append(g)
        in_bind.append(Tap(("out", j), 0, None))
    arrays_final = []
    for a in out_arrays:
        if a.init is not None and a.init < 0:
            a = replace(a, init=extra_index(extras[-1 - a.init]))
        arrays_final.append(a)
    rspec = ScanSpec(spec.time, True, len(seqs), tuple(arrays_final), n_sums, len(spill_targets),
                     Region(tuple(r_in), tuple(rb.eqns), tuple(r_out)), tuple(in_bind),
                     tuple(r_obind))
    outs: list[Var] = []
    for j, a in enumerate(arrays_final):
        shape = (spec.time,) + (acc_in[j].shape if j < n_arr else None or _dseq_shape(
            e, dseq_arrays, j))
        outs.append(top.var(a.name, shape))
    sums = [top.var(f"d_{t.name}", t.shape) for t in sum_targets]  # type: ignore[union-attr]
    spills = [top.var(f"d_{t.name}", t.shape) for t in spill_targets]  # type: ignore[union-attr]
    top.eqns.append(Eqn("scan", tuple(operands), tuple(outs + sums + spills),
                        (("scan", rspec),), e.span, "BPTT of " + (e.comment or "scan")))
    in_cots: list[Var | None] = [None] * len(e.inputs)

    def give(i: int, g: Var) -> None:
        cur = in_cots[i]
        in_cots[i] = g if cur is None else top.emit("add", (cur, g), None, f"d_{g.name}")

    for i, j in dseq_arrays.items():
        give(i, outs[j])
    for t, g in zip(sum_targets, sums, strict=True):
        give(e.inputs.index(t), g)
    for t, g in zip(spill_targets, spills, strict=True):
        give(e.inputs.index(t), g)
    return fwd, in_cots


def _dseq_shape(e: Eqn, dseq: dict[int, int], j: int) -> tuple[object, ...]:
    for i, a in dseq.items():
        if a == j:
            return e.inputs[i].shape[1:]
    raise InternalCompilerError("cotangent array without a source")


__all__ = ["GradPrograms", "TensorType", "grad_program"]
