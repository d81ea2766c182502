"""Dead-code elimination.

Pre: a well-formed program. Post: every top-level equation contributes to an output, and every
scan body equation contributes to a body output. Needed after autodiff, whose rules emit
cotangents for values nobody differentiates (masks, for one).

    before:  d_mask = sum_to(g)        # nobody reads d_mask
    after:   (removed)
"""

from __future__ import annotations

from dataclasses import replace

from rnnlang.ir.nodes import Eqn, Program, Var


def _live_eqns(eqns: tuple[Eqn, ...], live: set[str]) -> tuple[Eqn, ...]:
    keep: list[Eqn] = []
    for e in reversed(eqns):
        if e.op == "scan" or any(v.name in live for v in e.outputs):
            if e.op == "scan" and not any(v.name in live for v in e.outputs):
                continue
            keep.append(e)
            live.update(x.name for x in e.inputs if isinstance(x, Var))
    return tuple(reversed(keep))


def _prune_body(e: Eqn) -> Eqn:
    spec = e.attr("scan")
    if spec is None:
        return e
    body = spec.body
    live = {v.name for v in body.outputs}
    eqns = _live_eqns(body.eqns, live)
    used = live | {v.name for v in body.outputs}
    keep = [k for k, v in enumerate(body.inputs) if v.name in used]
    body = replace(body, eqns=eqns, inputs=tuple(body.inputs[k] for k in keep))
    in_bind = tuple(spec.in_bind[k] for k in keep)
    return replace(e, attrs=(("scan", replace(spec, body=body, in_bind=in_bind)),))


def dce(prog: Program, ctx: object = None) -> Program:
    live = {v.name for v in prog.outputs}
    eqns = _live_eqns(prog.eqns, live)
    return replace(prog, eqns=tuple(_prune_body(e) for e in eqns))
