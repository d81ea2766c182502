"""hoist_weight_gradients: weight gradients of the BPTT loop as one GEMM after it.

Pre: a reverse scan sums ``matmul_tn(a_t, g_t)`` (or ``sum_to(g_t)``) over time, where ``a_t``
is read from a sequence. Post: the loop stores ``g_t`` into a (T, B, m) array and, after the
loop, one GEMM over all steps computes the same sum (``a`` shifted in time when it was read
at ``t-k``). This trades one per-step (H x B x 4H) GEMM plus an H x 4H accumulation per step for
one large GEMM, which BLAS runs near peak.

    before:  reverse scan { dU_t = matmul_tn(h_prev, g)  -> sum 0 }
    after:   reverse scan { g -> G[t] };  dU = matmul_tn(shift(h, h0, 1), G)
"""

from __future__ import annotations

from dataclasses import replace

from rnnlang.ir.nodes import Eqn, OutArray, Program, ScanSpec, Store, SumTo, Tap, Var, all_names
from rnnlang.ir.types import TensorType
from rnnlang.passes.hoist import _fresh


def _candidates(spec: ScanSpec) -> dict[int, Eqn]:
    """Body eqns (by index) whose only use is a SumTo output, with hoistable operands."""
    uses: dict[str, int] = {}
    for x in spec.body.eqns:
        for v in x.inputs:
            if isinstance(v, Var):
                uses[v.name] = uses.get(v.name, 0) + 1
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    summed = {v.name for v, b in zip(spec.body.outputs, spec.out_bind, strict=True)
              if isinstance(b, SumTo)}
    out: dict[int, Eqn] = {}
    for k, x in enumerate(spec.body.eqns):
        name = x.outputs[0].name
        if name not in summed or uses.get(name, 0):
            continue
        if [v.name for v in spec.body.outputs].count(name) != 1:
            continue
        if x.op == "matmul_tn":
            a = x.inputs[0]
            tap = binds.get(a.name) if isinstance(a, Var) else None
            if isinstance(tap, Tap) and tap.source[0] == "in" and tap.offset <= 0:
                out[k] = x
        elif x.op == "sum_to" and len(x.outputs[0].shape) == 1:
            out[k] = x
    return out


def _hoist(e: Eqn, names: set[str], after: list[Eqn]) -> Eqn:
    spec: ScanSpec = e.attr("scan")
    if not spec.reverse:
        return e
    cands = _candidates(spec)
    if not cands:
        return e
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    n_arr = len(spec.arrays)
    arrays = list(spec.arrays)
    array_outs = list(e.outputs[:n_arr])
    sums_out = list(e.outputs[n_arr: n_arr + spec.n_sums])
    spills_out = list(e.outputs[n_arr + spec.n_sums:])
    body_outs = list(spec.body.outputs)
    out_bind = list(spec.out_bind)
    stored: dict[str, Var] = {}  # body value -> its (T, B, m) array
    per_array: dict[int, int] = {}
    for b in spec.out_bind:
        if isinstance(b, Store):
            per_array[b.array] = per_array.get(b.array, 0) + 1
    for v, b in zip(spec.body.outputs, spec.out_bind, strict=True):
        if isinstance(b, Store) and b.offset == 0 and per_array[b.array] == 1 and (
                not b.accumulate or spec.arrays[b.array].init is None):
            stored.setdefault(v.name, e.outputs[b.array])  # already kept: reuse it
    removed_sums: set[int] = set()
    for x in cands.values():
        g = x.inputs[-1]
        assert isinstance(g, Var)
        if g.name not in stored:
            seq = Var(_fresh(names, f"seq.{g.name}"), TensorType((spec.time,) + g.shape))
            arrays.append(OutArray(seq.name))
            array_outs.append(seq)
            body_outs.append(g)
            out_bind.append(Store(len(arrays) - 1))
            stored[g.name] = seq
        k = [v.name for v in spec.body.outputs].index(x.outputs[0].name)
        sum_index = spec.out_bind[k].index  # type: ignore[union-attr]
        removed_sums.add(sum_index)
        target = sums_out[sum_index]
        if x.op == "sum_to":
            after.append(Eqn("sum_to", (stored[g.name],), (target,), x.attrs, x.span))
            continue
        a = x.inputs[0]
        assert isinstance(a, Var)
        tap = binds[a.name]
        assert isinstance(tap, Tap)
        src = e.inputs[tap.source[1]]
        assert isinstance(src, Var)
        if tap.offset != 0:
            shifted = Var(_fresh(names, f"{src.name}[t{tap.offset}]"), src.type)
            fb = () if tap.fallback is None else (e.inputs[tap.fallback],)
            after.append(Eqn("shift", (src,) + fb, (shifted,), (("by", -tap.offset),), x.span))
            src = shifted
        after.append(Eqn("matmul_tn", (src, stored[g.name]), (target,), (), x.span,
                         "weight gradient: one GEMM over all steps"))
    drop = {x.outputs[0].name for x in cands.values()}
    keep_sums = [i for i in range(spec.n_sums) if i not in removed_sums]
    renum = {old: new for new, old in enumerate(keep_sums)}
    new_outs, new_bind = [], []
    for v, b in zip(body_outs, out_bind, strict=True):
        if isinstance(b, SumTo):
            if b.index in removed_sums:
                continue
            b = SumTo(renum[b.index])
        new_outs.append(v)
        new_bind.append(b)
    eqns = tuple(x for x in spec.body.eqns if x.outputs[0].name not in drop)
    new_spec = replace(spec, arrays=tuple(arrays), n_sums=len(keep_sums), out_bind=tuple(new_bind),
                       body=replace(spec.body, eqns=eqns, outputs=tuple(new_outs)))
    outs = tuple(array_outs) + tuple(sums_out[i] for i in keep_sums) + tuple(spills_out)
    return replace(e, outputs=outs, attrs=(("scan", new_spec),))


def hoist_weight_gradients(prog: Program, ctx: object = None) -> Program:
    names = all_names(prog)
    out: list[Eqn] = []
    for e in prog.eqns:
        if e.op == "scan":
            after: list[Eqn] = []
            out.append(_hoist(e, names, after))
            out.extend(after)
        else:
            out.append(e)
    return replace(prog, eqns=tuple(out))
