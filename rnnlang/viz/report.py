"""`rnnc compile --report`: what the compiler did to a model, in numbers.

Which products the passes hoisted out of the time loop or fused, which weight gradients became
one GEMM after the backward loop, how many numbers the forward pass keeps per time step for
BPTT, the parameter count and the floating-point operations per time step. Counts are per
sequence (one batch element); a multiply-add counts as 2 FLOPs; data movement (slices,
concatenation, selects on the mask, reversal) counts 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rnnlang.ir.nodes import Eqn, Program, ScanSpec, Var
from rnnlang.ir.ops import OPS
from rnnlang.ir.types import BATCH, Dim

if TYPE_CHECKING:
    from rnnlang.api import Model


class _Unknown(Exception):
    def __init__(self, names: set[str]):
        super().__init__(", ".join(sorted(names)))
        self.names = names


def _ev(d: Dim, dims: Mapping[str, int]) -> int:
    missing = {s for s in d.symbols if s not in dims}
    if missing:
        raise _Unknown(missing)
    return d.evaluate(dims)


def _timed(v: object) -> bool:
    """A (T, B, n) sequence."""
    shape = getattr(v, "shape", ())
    return len(shape) == 3 and shape[1] == BATCH


@dataclass
class Flops:
    matmul: int = 0
    pointwise: int = 0
    per_sequence: int = 0  # work done once per sequence, not per step

    @property
    def per_step(self) -> int:
        return self.matmul + self.pointwise


def _count(eqns: tuple[Eqn, ...], dims: Mapping[str, int], out: Flops, in_loop: bool) -> None:
    for e in eqns:
        if e.op == "scan":
            spec: ScanSpec = e.attr("scan")
            _count(spec.body.eqns, dims, out, True)
            continue
        per_step = in_loop or any(_timed(x) for x in e.inputs + e.outputs)
        n = _eqn_flops(e, dims)
        if n is None:
            continue
        kind, value = n
        if not per_step:
            out.per_sequence += value
        elif kind == "matmul":
            out.matmul += value
        else:
            out.pointwise += value


def _eqn_flops(e: Eqn, dims: Mapping[str, int]) -> tuple[str, int] | None:
    shapes = [x.shape for x in e.inputs]
    match e.op:
        case "matmul":
            return "matmul", 2 * _ev(shapes[1][0], dims) * _ev(shapes[1][1], dims)
        case "matmul_nt":
            return "matmul", 2 * _ev(shapes[1][0], dims) * _ev(shapes[1][1], dims)
        case "matmul_tn":
            return "matmul", 2 * _ev(shapes[0][-1], dims) * _ev(shapes[1][-1], dims)
        case "conv1d" | "conv1d_dx":  # (x, W, b) or (g, W); W is [kernel, in, out]
            k, f, c = (_ev(d, dims) for d in shapes[1])
            return "matmul", 2 * k * f * c
        case "conv1d_dw":  # (x, g)
            k = int(e.attr("kernel"))
            return "matmul", 2 * k * _ev(shapes[0][-1], dims) * _ev(shapes[1][-1], dims)
        case "sum_to":
            return "pointwise", _ev(shapes[0][-1], dims)
    op = OPS.get(e.op)
    if op is None or not op.pointwise or e.op == "select":
        return None
    return "pointwise", _ev(e.outputs[0].shape[-1], dims)


def flops(prog: Program, dims: Mapping[str, int]) -> Flops:
    out = Flops()
    _count(prog.eqns, dims, out, False)
    return out


def _num(n: int) -> str:
    return f"{n:,}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _shape(v: Var) -> str:
    return "[" + ", ".join(str(d) for d in v.shape) + "]"


def report_text(m: Model) -> str:
    """The report printed by ``rnnc compile --report``."""
    from rnnlang.passes.pipeline import BACKWARD

    dims = dict(m.static)
    item = m.dtype.itemsize
    lines = [f"model {m.name} ({m.source_name}), dtype {m.options.dtype}, target "
             f"{m.options.target}"]
    sizes = ", ".join(f"{k} = {v}" for k, v in sorted(dims.items()))
    lines.append(f"sizes: {sizes or 'none given'}")
    unknown = sorted({s for p in m.program.params for d in p.var.shape for s in d.symbols
                      if s not in dims})
    # parameters
    lines.append("")
    if unknown:
        lines.append(f"parameters: {len(m.program.params)} arrays; their sizes depend on "
                     f"{', '.join(unknown)} (give -D {unknown[0]}=...)")
        for p in m.program.params:
            lines.append(f"  {p.var.name:24s} {_shape(p.var)}")
    else:
        total = 0
        rows = []
        for p in m.program.params:
            n = 1
            for d in p.var.shape:
                n *= _ev(d, dims)
            total += n
            rows.append(f"  {p.var.name:24s} {_shape(p.var):14s} {_num(n):>12s}")
        lines.append(f"parameters: {len(m.program.params)} arrays, {_num(total)} numbers "
                     f"({_bytes(total * item)})")
        lines.extend(rows)
    # passes
    g = m.grad_programs()
    disabled = m.options.disabled_passes
    lines.append("")
    lines.append("forward passes: " + (", ".join(m.pass_log.applied) or "none (-O0)"))
    hoisted = [e for e in m.program.eqns if e.op == "matmul" and e.comment ==
               "hoisted from the loop"]
    fused = [e for e in m.program.eqns if e.op == "concat" and e.comment == "fused gate weights"]
    fused_names = {e.outputs[0].name: "[" + " | ".join(str(x) for x in e.inputs) + "]"
                   for e in fused}
    lines.append("  hoisted out of the time loop (one GEMM over all steps):")
    lines.extend(f"    {e.inputs[0]} @ {fused_names.get(str(e.inputs[1]), str(e.inputs[1]))}"
                 for e in hoisted)
    if not hoisted:
        lines.append("    none")
    lines.append("  fused gate products (weights side by side: one product instead of several):")
    lines.extend(f"    [{' | '.join(str(x) for x in e.inputs)}]" for e in fused)
    if not fused:
        lines.append("    none")
    back = [n for n, _ in BACKWARD if n not in disabled]
    lines.append("backward passes: " + (", ".join(back) or "none (-O0)"))
    wgrads = [e for e in g.backward.eqns if e.comment == "weight gradient: one GEMM over all steps"]
    lines.append("  weight gradients as one GEMM after the backward loop:")
    lines.extend(f"    {e.outputs[0]} = {e.inputs[0]}^T @ {e.inputs[1]}" for e in wgrads)
    if not wgrads:
        lines.append("    none")
    # BPTT storage
    lines.append("")
    per_step = [r for r in g.residuals if _timed(r)]
    per_seq = [r for r in g.residuals if len(r.shape) == 2 and r.shape[0] == BATCH]
    per_call = [r for r in g.residuals if r not in per_step and r not in per_seq]
    lines.append("stored by the forward pass for BPTT, per time step and sequence:")
    step_total = Dim()
    for r in per_step:
        step_total = step_total + r.shape[-1]
        lines.append(f"  {r.name:24s} {str(r.shape[-1]):>8s} numbers")
    try:
        n = _ev(step_total, dims)
        lines.append(f"  total: {_num(n)} numbers = {_num(n * item)} bytes per step per "
                     f"sequence ({m.options.dtype})")
    except _Unknown:
        lines.append(f"  total: {step_total} numbers per step per sequence")
    if per_seq:
        seq_total = Dim()
        for r in per_seq:
            seq_total = seq_total + r.shape[-1]
        lines.append(f"  plus once per sequence: {', '.join(r.name for r in per_seq)} "
                     f"({seq_total} numbers)")
    if per_call:
        lines.append("  plus once per call: " + ", ".join(
            f"{fused_names.get(r.name, r.name)} {_shape(r)}" for r in per_call))
    lines.append("  (the inputs are read again by the backward pass and are not counted)")
    # FLOPs
    lines.append("")
    try:
        fw = flops(m.program, dims)
        bw = flops(g.backward, dims)
        lines.append("FLOPs per time step and sequence (a multiply-add is 2):")
        for name, f in (("forward", fw), ("backward", bw)):
            extra = f"; plus {_num(f.per_sequence)} once per sequence" if f.per_sequence else ""
            lines.append(f"  {name:9s} {_num(f.per_step):>12s}   (matrix products "
                         f"{_num(f.matmul)}, pointwise {_num(f.pointwise)}{extra})")
        lines.append(f"  training  {_num(fw.per_step + bw.per_step):>12s}   (forward + "
                     "backward)")
    except _Unknown as exc:
        lines.append(f"FLOPs per time step: depend on {exc} (give -D {sorted(exc.names)[0]}"
                     "=...)")
    return "\n".join(lines) + "\n"
