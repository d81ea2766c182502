"""Lower one application of a cell over a sequence into a forward `scan`.

The cell body becomes the scan's per-step `Region`: ports and delayed reads become `Tap`s,
parameters become loop invariants, and each recurrent state is frozen at padded steps by a
``select`` on the step mask so that lengths work for any cell, forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from rnnlang.diagnostics import RnnUserError, Span, did_you_mean, error
from rnnlang.ir.nodes import (
    ConstRef,
    Eqn,
    InitSpec,
    Operand,
    OutArray,
    Param,
    Region,
    ScanSpec,
    Store,
    Tap,
    Var,
)
from rnnlang.ir.ops import USER_FUNCTIONS
from rnnlang.ir.types import BATCH, ONE, Dim, TensorType
from rnnlang.lower.builder import Builder, NameGen
from rnnlang.lower.exprs import ExprLowering, Value, describe, features
from rnnlang.lower.inits import lower_init
from rnnlang.syntax import ast

MAX_DELAY = 1000


@dataclass
class CellResult:
    """What a layer application gives the model: output sequences and final states."""

    outputs: dict[str, Var]  # output name -> (T, B, n), zero at padded steps
    finals: dict[str, Var]  # state name -> (B, n)
    state_types: dict[str, Dim]


@dataclass
class _Ctx:
    cell: ast.CellDef
    layer: str
    dims: dict[str, Dim]
    fns: dict[str, str]
    states: list[str]
    body_in: dict[tuple[object, ...], Var] = field(default_factory=dict)
    in_bind: dict[tuple[object, ...], Tap | ConstRef] = field(default_factory=dict)
    params: dict[str, Var] = field(default_factory=dict)  # cell param name -> program var


def cell_symbols(cell: ast.CellDef) -> list[str]:
    """Sizes a cell is generic over, in the order positional call arguments bind them."""
    seen: list[str] = []
    dims = [p.dim for p in cell.outputs] + [
        s.dim for s in cell.body if isinstance(s, ast.StateDecl)]
    for s in cell.body:
        if isinstance(s, ast.ParamDecl):
            dims.extend(s.dims)
    for p in cell.inputs:
        dims.append(p.dim)
    for d in dims:
        for n, _ in d.terms:
            if n not in seen:
                seen.append(n)
    return seen


def state_names(cell: ast.CellDef) -> list[str]:
    """Outputs read with a delay plus declared states, outputs first."""
    delayed: set[str] = set()

    def visit(e: ast.Expr) -> None:
        if isinstance(e, ast.Index) and isinstance(e.base, ast.Name):
            delayed.add(e.base.id)
        for c in ast.expr_children(e):
            visit(c)

    for s in cell.body:
        if isinstance(s, ast.Assign):
            visit(s.value)
    declared = [s.name for s in cell.body if isinstance(s, ast.StateDecl)]
    outs = [p.name for p in cell.outputs if p.name in delayed or p.name in declared]
    return outs + [n for n in declared if n not in outs]


def subst(d: ast.LinDim, env: dict[str, Dim]) -> Dim:
    out = Dim.of(d.const)
    for n, k in d.terms:
        out = out + env[n].scale(k)
    return out


class _CellLowering(ExprLowering):
    def __init__(self, b: Builder, ctx: _Ctx, ports: dict[str, int], locals_: dict[str, Var]):
        super().__init__(b, ctx.dims, ctx.fns)
        self.ctx = ctx
        self.ports = ports
        self.locals = locals_

    def known_names(self) -> list[str]:
        c = self.ctx
        return list(self.locals) + list(self.ports) + c.states + [
            s.name for s in c.cell.body if isinstance(s, ast.ParamDecl)]

    def size_names(self) -> dict[str, str]:
        return cell_size_names(self.ctx.dims)

    def _input(self, key: tuple[object, ...], hint: str, shape: tuple[Dim, ...],
               bind: Tap | ConstRef) -> Var:
        if key not in self.ctx.body_in:
            self.ctx.body_in[key] = self.b.var(hint, shape)
            self.ctx.in_bind[key] = bind
        return self.ctx.body_in[key]

    def tap_state(self, name: str, k: int) -> Var:
        j = self.ctx.states.index(name)
        shape = (BATCH, self.state_dim(name))
        hint = name + "_prev" if k == 1 else f"{name}_t{k}"
        return self._input(("state", name, k), hint, shape, Tap(("out", j), -k, None))

    def state_dim(self, name: str) -> Dim:
        for p in self.ctx.cell.outputs:
            if p.name == name:
                return subst(p.dim, self.ctx.dims)
        for s in self.ctx.cell.body:
            if isinstance(s, ast.StateDecl) and s.name == name:
                return subst(s.dim, self.ctx.dims)
        raise AssertionError(name)

    def tap_input(self, name: str, k: int) -> Var:
        port = self.ctx.cell.inputs[self.ports[name]]
        shape = (BATCH, subst(port.dim, self.ctx.dims))
        hint = name if k == 0 else f"{name}_t{k}"
        return self._input(("in", name, k), hint, shape, Tap(("in", 0), -k, None))

    def resolve(self, name: ast.Name) -> Value:
        n = name.id
        if n in self.locals:
            return self.locals[n]
        if n in self.ports:
            return self.tap_input(n, 0)
        if n in self.ctx.params:
            p = self.ctx.params[n]
            return self._input(("param", n), n, p.shape, ConstRef(-1))
        if n in self.ctx.states or n in [p.name for p in self.ctx.cell.outputs]:
            raise error("E303", f"'{n}' is used before it is assigned in this step", name.span,
                        hint=f"write {n}[t-1] for its value at the previous step")
        if n in self.ctx.fns or n in USER_FUNCTIONS:
            raise error("E208", f"'{n}' is a function; call it as {n}(...)", name.span)
        if n == "t":
            raise error("E309", "'t' (the time step) can only appear in a delay like s[t-1]",
                        name.span)
        raise error("E202", f"unknown name '{n}'", name.span,
                    hint=did_you_mean(n, self.known_names()))

    def index(self, e: ast.Index) -> Value:
        if not isinstance(e.base, ast.Name):
            raise error("E308", "only a name can be delayed, as in s[t-1]", e.span)
        k = _delay(e.index, e.base.id)
        n = e.base.id
        if k == 0:
            return self.resolve(e.base)
        if n in self.ports:
            return self.tap_input(n, k)
        if n in self.ctx.states:
            return self.tap_state(n, k)
        if n in self.locals or n in self.ctx.params:
            raise error("E310", f"'{n}[t-{k}]' reads a previous step, but '{n}' is not a "
                        "recurrent state", e.span,
                        hint=f"declare it with 'state {n}[...]' or make it a cell output")
        return self.resolve(e.base)


def cell_size_names(env: dict[str, Dim]) -> dict[str, str]:
    """Model size -> the cell's own size name when every size is bound one-to-one to a model
    size (``I = F, H = H``); otherwise nothing is renamed, so messages never mix the two."""
    out: dict[str, str] = {}
    for name, d in env.items():
        if d.const != 0 or len(d.terms) != 1 or d.terms[0][1] != 1 or d.terms[0][0] in out:
            return {}
        out[d.terms[0][0]] = name
    return out


def _bindings(env: dict[str, Dim]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in env.items())


def _span_text(span: Span) -> str:
    if span.end_line != span.line:
        return span.source.line(span.line)[span.col - 1 :].strip()
    return span.source.line(span.line)[span.col - 1 : span.end_col - 1]


_SHAPE_ERRORS = frozenset({"E203", "E204", "E205", "E207", "E211"})


def _delay(e: ast.Expr, name: str = "s") -> int:
    match e:
        case ast.Name(id="t"):
            return 0
        case ast.BinOp(op="-", left=ast.Name(id="t"), right=ast.Num(value=v, text=txt)):
            if not float(v).is_integer() or "." in txt:
                raise error("E311", f"a delay must be a whole number of steps, not {txt}", e.span,
                            hint=f"write {name}[t-1], {name}[t-2], ...")
            if v > MAX_DELAY:
                raise error("E311", f"a delay of {txt} steps is longer than the limit of "
                            f"{MAX_DELAY}", e.span)
            return int(v)
        case ast.BinOp(op="+", left=ast.Name(id="t")):
            raise error("E311", f"'{name}[{_span_text(e.span)}]' would read a future step", e.span,
                        hint=f"a cell sees only the current and earlier steps, e.g. {name}[t-1]")
    raise error("E311", f"a delay must look like [t-k] with k an integer from 1 to {MAX_DELAY}",
                e.span, hint=f"for example {name}[t-1]")


def bind_cell_dims(cell: ast.CellDef, call: ast.Call, x: Var, outer: ExprLowering,
                   ) -> tuple[dict[str, Dim], dict[str, str]]:
    """Sizes from the input sequence and the call's arguments; activation overrides."""
    check_declarations(cell)
    fn_decls = {s.name: s for s in cell.body if isinstance(s, ast.FnDecl)}
    env: dict[str, Dim] = {}
    if len(cell.inputs) != 1:
        raise error("E416", f"cell '{cell.name}' has {len(cell.inputs)} inputs; 'over' feeds it "
                    "one sequence", call.span,
                    hint="give the cell one input port and concatenate the inputs into it: "
                    "concat(a, b)")
    port = cell.inputs[0]
    feat = features(x)
    if len(port.dim.terms) == 1 and port.dim.terms[0][1] == 1 and port.dim.const == 0:
        env[port.dim.terms[0][0]] = feat
    elif port.dim.terms or Dim.of(port.dim.const) != feat:
        raise error("E402", f"cell '{cell.name}' reads {port.name}[{port.dim.const}] but is applied "
                    f"over {describe(x)}", call.span)
    free = [s for s in cell_symbols(cell) if s not in env]
    if len(call.args) > len(free):
        raise error("E403", f"cell '{cell.name}' takes {len(free)} size argument(s) "
                    f"({', '.join(free) or 'none'}) but {len(call.args)} were given", call.span,
                    hint=f"write {cell.name}({', '.join(free)})" + (
                        f"; its input size {', '.join(env)} comes from the sequence" if env else ""))
    for name, a in zip(free, call.args, strict=False):
        env[name] = outer.size(a, f"size {name} of '{cell.name}'")
    fns = {n: d.default for n, d in fn_decls.items()}
    for k, v in call.kwargs:
        if k in fn_decls:
            if not (isinstance(v, ast.Name) and v.id in USER_FUNCTIONS):
                what = f"unknown activation '{v.id}'" if isinstance(v, ast.Name) else (
                    "not an activation")
                raise error("E404", f"{what} for '{k}'", v.span,
                            hint=(did_you_mean(v.id, USER_FUNCTIONS) if isinstance(v, ast.Name)
                                  else None) or "one of " + ", ".join(USER_FUNCTIONS))
            fns[k] = v.id
        elif k in env and k not in free:
            raise error("E405", f"size {k} of '{cell.name}' comes from the input sequence",
                        v.span, hint=f"remove {k}=...")
        elif k in free:
            if k in env:
                raise error("E405", f"size {k} of '{cell.name}' is given twice", v.span)
            env[k] = outer.size(v, f"size {k} of '{cell.name}'")
        else:
            raise error("E405", f"cell '{cell.name}' has no size or activation '{k}'", v.span,
                        hint=did_you_mean(k, free + list(fn_decls)))
    missing = [s for s in free if s not in env]
    if missing:
        raise error("E406", f"cell '{cell.name}' needs a value for {', '.join(missing)}",
                    call.span, hint=f"write {cell.name}({', '.join(free)})")
    for n, d in fn_decls.items():
        if d.default not in USER_FUNCTIONS:
            raise error("E404", f"unknown activation '{d.default}' for '{n}'", d.default_span,
                        hint=did_you_mean(d.default, USER_FUNCTIONS) or "one of " + ", ".join(
                            USER_FUNCTIONS))
    return env, fns


def check_declarations(cell: ast.CellDef) -> None:
    """Each port, state, parameter and activation name is declared once."""
    seen: dict[str, tuple[str, Span]] = {}

    def declare(name: str, kind: str, span: Span) -> None:
        if name in seen:
            other, first = seen[name]
            raise error("E210", f"'{name}' is declared twice in cell '{cell.name}'", span,
                        hint=f"it is already {other} on line {first.line}")
        seen[name] = (kind, span)

    for p in cell.inputs:
        declare(p.name, "an input", p.span)
    outs = {p.name for p in cell.outputs}
    for p in cell.outputs:
        declare(p.name, "an output", p.span)
    for st in cell.body:
        match st:
            case ast.StateDecl() if st.name in outs:  # an output declared as a state: allowed
                pass
            case ast.StateDecl():
                declare(st.name, "a state", st.span)
            case ast.ParamDecl():
                declare(st.name, "a parameter", st.span)
            case ast.FnDecl():
                declare(st.name, "an activation", st.span)


def lower_cell_body(cell: ast.CellDef, ctx: _Ctx, b: Builder) -> dict[str, Var]:
    ports = {p.name: i for i, p in enumerate(cell.inputs)}
    locals_: dict[str, Var] = {}
    low = _CellLowering(b, ctx, ports, locals_)
    reserved = set(ports) | set(ctx.params) | set(ctx.fns)
    for s in cell.body:
        if not isinstance(s, ast.Assign):
            continue
        v = low.lower(s.value)
        vals = v if isinstance(v, tuple) else (v,)
        if len(vals) != len(s.targets):
            raise error("E209", f"{len(s.targets)} name(s) on the left but {len(vals)} value(s) "
                        "on the right", s.span, hint=targets_hint(len(vals)))
        for (name, sp), val in zip(s.targets, vals, strict=True):
            if name == "t":
                raise error("E210", "'t' is the time step and cannot be assigned", sp)
            if name in reserved:
                kind = ("the cell's input" if name in ports else "a parameter"
                        if name in ctx.params else "an activation")
                raise error("E210", f"'{name}' is {kind} and cannot be assigned", sp)
            if name in locals_:
                raise error("E210", f"'{name}' is already defined; each name is assigned once "
                            "per step", sp, hint="use a new name for the new value")
            if not isinstance(val, Var) or val.shape[:1] != (BATCH,):
                raise error("E211", f"'{name}' must be a per-step vector, got {low.show(val)}"
                            if isinstance(val, Var) else f"'{name}' is a constant", sp,
                            hint="cell values are computed from the input or the state each "
                            "step, e.g. h = tanh(x @ W + b)")
            locals_[name] = b.rename(val, name) if len(set(vals)) == len(vals) else val
    for name in [p.name for p in cell.outputs] + ctx.states:
        if name not in locals_:
            kind = "output" if name in [p.name for p in cell.outputs] else "state"
            raise error("E212", f"cell '{cell.name}' never assigns its {kind} '{name}'",
                        _decl_span(cell, name),
                        hint=f"assign it in the cell body: {name} = ..." + (
                            f" (read the previous step as {name}[t-1])" if kind == "state"
                            else ""))
        want = low.state_dim(name)
        got = locals_[name]
        if got.shape != (BATCH, want):
            raise error("E203", f"'{name}' is declared [{low.show_dim(want)}] but assigned "
                        f"{low.show(got)}", _assign_span(cell, name))
    return locals_


def targets_hint(n: int) -> str:
    names = ", ".join("abcdefgh"[:n]) if n <= 8 else "a, b, ..."
    return f"write one name per value: {names} = ..."


def _decl_span(cell: ast.CellDef, name: str) -> Span:
    for st in cell.body:
        if isinstance(st, ast.StateDecl) and st.name == name:
            return st.span
    for p in cell.outputs:
        if p.name == name:
            return p.span
    return cell.span


def _assign_span(cell: ast.CellDef, name: str) -> Span:
    for s in cell.body:
        if isinstance(s, ast.Assign):
            for n, sp in s.targets:
                if n == name:
                    return sp
    return cell.span


def declare_params(cell: ast.CellDef, layer: str, env: dict[str, Dim], outer: ExprLowering,
                   names: NameGen) -> tuple[dict[str, Var], list[Param]]:
    vars_: dict[str, Var] = {}
    params: list[Param] = []
    for s in cell.body:
        if isinstance(s, ast.ParamDecl):
            shape = tuple(subst(d, env) for d in s.dims)
            v = Var(names.fresh(f"{layer}.{s.name}"), TensorType(shape))
            vars_[s.name] = v
            params.append(Param(v, lower_init(s.init, len(shape), outer), s.span))
    return vars_, params


def apply_cell(cell: ast.CellDef, call: ast.Call, x: Var, mask: Var, layer: str,
               init: dict[str, Var] | None, outer: ExprLowering, top: Builder,
               params_out: list[Param], state_inputs: list[tuple[str, Var]]) -> CellResult:
    """Emit params and one forward scan for ``cell`` applied over ``x``."""
    env, fns = bind_cell_dims(cell, call, x, outer)
    states = state_names(cell)
    pvars, params = declare_params(cell, layer, env, outer, top.names)
    params_out.extend(params)
    ctx = _Ctx(cell, layer, env, fns, states, params=pvars)
    body = Builder(top.names)
    try:
        locals_ = lower_cell_body(cell, ctx, body)
    except RnnUserError as exc:  # say where and with which sizes the cell was applied
        note = (f"in {_span_text(call.span)} applied at {call.span}, where "
                f"{_bindings(env)}")
        raise RnnUserError(replace(d, notes=d.notes + (note,)) if d.code in _SHAPE_ERRORS
                           else d for d in exc.diagnostics) from None
    low = _CellLowering(body, ctx, {}, locals_)
    mask_t = body.var("m", (BATCH, ONE))
    stores: list[tuple[Var, Store]] = []
    for j, s in enumerate(states):
        prev = low.tap_state(s, 1)
        new = body.emit("select", (mask_t, locals_[s], prev), None, s + "_next")
        stores.append((new, Store(j)))
    plain = [p.name for p in cell.outputs if p.name not in states]
    for k, name in enumerate(plain):
        stores.append((locals_[name], Store(len(states) + k)))
    # scan operands: seqs [x, mask], then invariants (params, init fallbacks)
    operands: list[Var] = [x, mask]
    in_bind: list[Tap | ConstRef] = []
    for key in ctx.body_in:
        bnd = ctx.in_bind[key]
        if isinstance(bnd, ConstRef):
            operands.append(pvars[key[1]])  # type: ignore[index]
            bnd = ConstRef(len(operands) - 1)
        in_bind.append(bnd)
    inits = _init_values(cell, ctx, layer, init, low, top, params_out, state_inputs, outer,
                         call)
    for i, (key, bnd) in enumerate(zip(ctx.body_in, in_bind, strict=True)):
        if isinstance(bnd, Tap) and bnd.source[0] == "out":
            operands.append(inits[key[1]])  # type: ignore[index]
            in_bind[i] = Tap(bnd.source, bnd.offset, len(operands) - 1)
    spec = ScanSpec(
        time=x.shape[0], reverse=False, n_seq=2,
        arrays=tuple(OutArray(n) for n in states + plain), n_sums=0, n_spills=0,
        body=Region(tuple(ctx.body_in.values()) + (mask_t,), tuple(body.eqns),
                    tuple(v for v, _ in stores)),
        in_bind=tuple(in_bind) + (Tap(("in", 1), 0, None),),
        out_bind=tuple(st for _, st in stores))
    outs = tuple(top.var(f"{layer}.{n}", (x.shape[0], BATCH, low.state_dim(n) if n in states
                                          else locals_[n].shape[1])) for n in states + plain)
    top.eqns.append(Eqn("scan", tuple(operands), outs, (("scan", spec),), call.span,
                        f"{cell.name} over a sequence"))
    by_name = dict(zip(states + plain, outs, strict=True))
    result = CellResult({}, {}, {s: low.state_dim(s) for s in states})
    for p in cell.outputs:
        result.outputs[p.name] = top.emit("mul", (by_name[p.name], mask), None, f"{layer}.{p.name}")
    for s in states:
        result.finals[s] = top.emit("last", (by_name[s], mask), None, f"{layer}.{s}_final")
    return result


def _init_values(cell: ast.CellDef, ctx: _Ctx, layer: str, init: dict[str, Var] | None,
                 low: _CellLowering, top: Builder, params_out: list[Param],
                 state_inputs: list[tuple[str, Var]], outer: ExprLowering,
                 call: ast.Call) -> dict[str, Var]:
    decls = {s.name: s for s in cell.body if isinstance(s, ast.StateDecl)}
    out: dict[str, Var] = {}
    for s in ctx.states:
        shape = (BATCH, low.state_dim(s))
        if init is not None:
            got = init.get(s)
            if got is None or got.shape != shape:
                why = "has no state" if got is None else f"has a state of size {got.shape[-1]} for"
                have = ", ".join(f"{k}[{v.shape[-1]}]" for k, v in init.items())
                raise error("E410", f"the 'from' layer {why} '{s}', which "
                            f"{_span_text(call.span)} needs as [{shape[1]}]", call.span,
                            notes=[f"the 'from' layer's final states are {have}"],
                            hint="'from' passes final states between layers of the same cell "
                            "and size")
            out[s] = got
        elif s in decls and decls[s].init is not None:
            d = decls[s]
            spec = lower_init(d.init, 1, outer, allow_learnable=True)
            if spec.name == "learnable":
                spec = InitSpec("zeros")
            v = Var(top.names.fresh(f"{layer}.{s}0"), TensorType(shape[1:]))
            params_out.append(Param(v, spec, d.span))
            z = top.emit("zeros", (), None, f"{layer}.{s}_z", {"shape": shape})
            out[s] = top.emit("add", (z, v), None, f"{layer}.{s}_init")
        else:
            v = Var(top.names.fresh(f"{layer}.{s}0"), TensorType(shape))
            state_inputs.append((v.name, v))
            out[s] = v
    return out


def check_operand_is_seq(x: Operand, span: Span, what: str = "'over'") -> Var:
    if not isinstance(x, Var) or len(x.shape) != 3 or x.shape[1] != BATCH:
        got = describe(x)
        if len(x.shape) == 2 and x.shape[0] == BATCH:
            got = f"a vector {got}"
        raise error("E407", f"{what} needs a sequence, got {got}", span,
                    hint="use repeat(v, x) to turn a vector into a sequence"
                    if len(x.shape) == 2 and what == "'over'" else None)
    return x
