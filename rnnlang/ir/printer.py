"""Deterministic text form of the IR, used by goldens, `--emit ir` and `rnnc graph --text`."""

from __future__ import annotations

from rnnlang.ir.nodes import ConstRef, Eqn, Program, Region, ScanSpec, Store, SumTo, Tap, Var


def _fmt(v: object) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def _attrs(e: Eqn) -> str:
    items = [f"{k}={_fmt(v)}" for k, v in e.attrs if k != "scan"]
    return ("[" + ", ".join(items) + "]") if items else ""


def _decl(v: Var) -> str:
    return f"{v.name}: {v.type}"


def print_eqns(eqns: tuple[Eqn, ...], indent: str = "  ") -> list[str]:
    out: list[str] = []
    for e in eqns:
        lhs = ", ".join(_decl(v) for v in e.outputs)
        args = ", ".join(str(x) for x in e.inputs)
        out.append(f"{indent}{lhs} = {e.op}{_attrs(e)}({args})")
        spec = e.attr("scan")
        if isinstance(spec, ScanSpec):
            out.extend(_print_scan(spec, e, indent + "    "))
    return out


def _bind(b: Tap | ConstRef | Store | SumTo, e: Eqn) -> str:
    match b:
        case Tap(source=(kind, i), offset=o, fallback=f):
            src = e.inputs[i] if kind == "in" else e.outputs[i]
            fb = f" else {e.inputs[f]}" if f is not None else ""
            return f"{src}[t{o:+d}]{fb}" if o else f"{src}[t]{fb}"
        case ConstRef(index=i):
            return str(e.inputs[i])
        case Store(array=a, offset=o, accumulate=acc, spill=sp):
            arrow = "+=" if acc else "="
            where = f"[t{o:+d}]" if o else "[t]"
            extra = f" (spill {sp})" if sp is not None else ""
            return f"{arrow} {e.outputs[a]}{where}{extra}"
        case SumTo(index=i):
            return f"+= sum {i}"
    return "?"


def _print_scan(spec: ScanSpec, e: Eqn, indent: str) -> list[str]:
    direction = "reverse" if spec.reverse else "forward"
    out = [f"{indent}{direction} over t < {spec.time}:"]
    for v, b in zip(spec.body.inputs, spec.in_bind, strict=True):
        out.append(f"{indent}  in  {_decl(v)} <- {_bind(b, e)}")
    out.extend(print_eqns(spec.body.eqns, indent + "  "))
    for v, ob in zip(spec.body.outputs, spec.out_bind, strict=True):
        out.append(f"{indent}  out {v.name} {_bind(ob, e)}")
    return out


def print_region(r: Region) -> str:
    return "\n".join(print_eqns(r.eqns))


def print_program(p: Program) -> str:
    lines = [f"program {p.name}"]
    for i in p.inputs:
        lines.append(f"  input {_decl(i.var)} ({i.role})")
    for prm in p.params:
        args = ", ".join(f"{a:g}" for a in prm.init.args)
        lines.append(f"  param {_decl(prm.var)} = {prm.init.name}({args})")
    for d, rule, args in p.derived:
        lines.append(f"  size {d} = {rule}{args}")
    lines.extend(print_eqns(p.eqns))
    for name, v in zip(p.output_names, p.outputs, strict=True):
        lines.append(f"  output {name} = {v.name}")
    return "\n".join(lines) + "\n"
