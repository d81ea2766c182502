"""fuse_gate_matmuls: one matmul for products that share their left operand.

Pre: a forward scan body multiplies the same vector by several loop-invariant matrices.
Post: the matrices are concatenated once outside the loop; the body does one matmul and takes
slices (free views) of the result. Runs before hoisting, so fused input products are hoisted
as one GEMM.

    before:  a = matmul(x, Wf);  b = matmul(x, Wh)
    after:   Wc = concat(Wf, Wh)  (outside);  ab = matmul(x, Wc);  a = ab[:, :H];  b = ab[:, H:]
"""

from __future__ import annotations

from dataclasses import replace

from rnnlang.ir.nodes import ConstRef, Eqn, Program, ScanSpec, Var
from rnnlang.ir.types import Dim, TensorType
from rnnlang.passes.hoist import _fresh, rewrite_scans


def _fuse_scan(e: Eqn, names: set[str], pre: list[Eqn]) -> Eqn:
    spec: ScanSpec = e.attr("scan")
    if spec.reverse:
        return e
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    groups: dict[str, list[Eqn]] = {}
    for x in spec.body.eqns:
        if x.op == "matmul" and isinstance(x.inputs[1], Var) and isinstance(
                binds.get(x.inputs[1].name), ConstRef) and isinstance(x.inputs[0], Var):
            groups.setdefault(x.inputs[0].name, []).append(x)
    groups = {k: g for k, g in groups.items() if len({m.inputs[1].name for m in g}) == len(g) > 1}
    if not groups:
        return e
    inputs = list(e.inputs)
    body_inputs = list(spec.body.inputs)
    in_bind = list(spec.in_bind)
    replace_at: dict[int, list[Eqn]] = {}
    drop: set[int] = set()
    for g in groups.values():
        ws = [inputs[binds[m.inputs[1].name].index] for m in g]  # type: ignore[union-attr]
        total = Dim()
        for w in ws:
            total = total + w.shape[1]
        wname = _fresh(names, "+".join(w.name for w in ws))  # type: ignore[union-attr]
        wc = Var(wname, TensorType((ws[0].shape[0], total)))
        pre.append(Eqn("concat", tuple(ws), (wc,), (), g[0].span, "fused gate weights"))
        inputs.append(wc)
        wb = Var(_fresh(names, wname + ".body"), wc.type)
        body_inputs.append(wb)
        in_bind.append(ConstRef(len(inputs) - 1))
        a = g[0].inputs[0]
        fused = Var(_fresh(names, "+".join(m.outputs[0].name for m in g)),
                    TensorType(a.shape[:-1] + (total,)))
        new = [Eqn("matmul", (a, wb), (fused,), (), g[0].span, g[0].comment)]
        start = Dim()
        for m in g:
            stop = start + m.outputs[0].shape[-1]
            new.append(Eqn("slice", (fused,), m.outputs, (("start", start), ("stop", stop)),
                           m.span))
            start = stop
        first = spec.body.eqns.index(g[0])
        replace_at[first] = new
        drop.update(spec.body.eqns.index(m) for m in g)
    eqns: list[Eqn] = []
    for k, x in enumerate(spec.body.eqns):
        if k in replace_at:
            eqns.extend(replace_at[k])
        elif k not in drop:
            eqns.append(x)
    new_spec = replace(spec, in_bind=tuple(in_bind),
                       body=replace(spec.body, inputs=tuple(body_inputs), eqns=tuple(eqns)))
    return replace(e, inputs=tuple(inputs), attrs=(("scan", new_spec),))


def fuse_gate_matmuls(prog: Program, ctx: object = None) -> Program:
    return rewrite_scans(prog, _fuse_scan)
