"""hoist_input_projections: move ``x_t @ W`` out of the time loop.

Pre: scan bodies may multiply a tapped input sequence by a loop-invariant matrix.
Post: each such product is one top-level GEMM over all steps; the body taps its result.

    before:  scan(x, ...) { xt <- x[t];  a = matmul(xt, W) ... }
    after:   xW = matmul(x, W);  scan(x, xW, ...) { a <- xW[t] ... }

Delayed taps (``x[t-2] @ W``) reuse the hoisted product at the same offset: zeros stay zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rnnlang.ir.nodes import ConstRef, Eqn, Program, ScanSpec, Tap, Var, all_names
from rnnlang.ir.types import TensorType


def _hoist_scan(e: Eqn, names: set[str], new_top: list[Eqn]) -> Eqn:
    spec: ScanSpec = e.attr("scan")
    if spec.reverse:
        return e
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    inputs = list(e.inputs)
    seqs = list(inputs[: spec.n_seq])
    extras = list(inputs[spec.n_seq:])
    body_inputs = list(spec.body.inputs)
    in_bind = list(spec.in_bind)
    eqns = []
    hoisted: dict[tuple[str, str], int] = {}  # (seq name, W name) -> new seq index
    for x in spec.body.eqns:
        a = x.inputs[0] if x.op == "matmul" else None
        bw = x.inputs[1] if x.op == "matmul" else None
        ta = binds.get(a.name) if isinstance(a, Var) else None
        tw = binds.get(bw.name) if isinstance(bw, Var) else None
        if not (isinstance(ta, Tap) and ta.source[0] == "in" and ta.fallback is None
                and isinstance(tw, ConstRef)):
            eqns.append(x)
            continue
        seq = seqs[ta.source[1]]
        w = inputs[tw.index]
        key = (seq.name, w.name)  # type: ignore[union-attr]
        if key not in hoisted:
            name = _fresh(names, f"{seq.name}@{w.name}")  # type: ignore[union-attr]
            out = Var(name, TensorType(seq.shape[:-1] + (w.shape[1],)))
            new_top.append(Eqn("matmul", (seq, w), (out,), (), x.span, "hoisted from the loop"))
            seqs.append(out)
            hoisted[key] = len(seqs) - 1
        body_inputs.append(x.outputs[0])
        in_bind.append(Tap(("in", hoisted[key]), ta.offset, None))
    if not hoisted:
        return e
    shift = len(seqs) - spec.n_seq

    def fix(b: Tap | ConstRef) -> Tap | ConstRef:
        if isinstance(b, ConstRef):
            return ConstRef(b.index + shift)
        if b.fallback is not None:
            return replace(b, fallback=b.fallback + shift)
        return b

    in_bind = [fix(b) if i < len(spec.in_bind) else b for i, b in enumerate(in_bind)]
    arrays = tuple(replace(a, init=None if a.init is None else a.init + shift)
                   for a in spec.arrays)
    new_spec = replace(spec, n_seq=len(seqs), arrays=arrays, in_bind=tuple(in_bind),
                       body=replace(spec.body, inputs=tuple(body_inputs), eqns=tuple(eqns)))
    from rnnlang.passes.dce import _prune_body

    return _prune_body(replace(e, inputs=tuple(seqs + extras), attrs=(("scan", new_spec),)))


def _fresh(names: set[str], hint: str) -> str:
    name, k = hint, 1
    while name in names:
        name, k = f"{hint}_{k}", k + 1
    names.add(name)
    return name


def rewrite_scans(prog: Program, fn: Callable[[Eqn, set[str], list[Eqn]], Eqn]) -> Program:
    """Apply ``fn(scan, names, pre)`` to every scan; ``pre`` collects equations placed before."""
    names = all_names(prog)
    out: list[Eqn] = []
    for e in prog.eqns:
        if e.op == "scan":
            pre: list[Eqn] = []
            e = fn(e, names, pre)
            out.extend(pre)
        out.append(e)
    return replace(prog, eqns=tuple(out))


def hoist_input_projections(prog: Program, ctx: object = None) -> Program:
    return rewrite_scans(prog, _hoist_scan)
