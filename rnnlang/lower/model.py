"""Lower a model (wiring of layers over sequences) into a `Program`.

Sizes stay symbolic (``H``, ``T:x``, ``B``): the program is compiled once and bound to concrete
sizes at call time. Every sequence's time axis has its own mask input so that lengths reach every
layer; convolutions with a stride get a derived time axis whose lengths the runtime computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rnnlang.diagnostics import Span, did_you_mean, error
from rnnlang.ir.nodes import InputInfo, Param, Program, Var
from rnnlang.ir.types import BATCH, ONE, Dim, TensorType
from rnnlang.lower.builder import Builder, NameGen, unique_name
from rnnlang.lower.cell import apply_cell, check_operand_is_seq, targets_hint
from rnnlang.lower.exprs import MAX_SIZE, ExprLowering, Value, describe, features, sign
from rnnlang.lower.inits import lower_init
from rnnlang.syntax import ast

MAX_LAYERS = 64
MAX_CHANNELS = 1 << 16


@dataclass
class LayerValue:
    """The result of ``layer over seq``: its output sequences and, per sublayer, final states."""

    outputs: tuple[Var, ...]
    finals: dict[str, Var] | None = None
    sub: list[LayerValue] | None = None
    cell: str = ""


@dataclass
class _State:
    names: NameGen
    inputs: list[InputInfo] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    masks: dict[Dim, Var] = field(default_factory=dict)
    derived: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    state_inputs: list[tuple[str, Var]] = field(default_factory=list)

    def param_vars(self) -> list[Var]:
        return [p.var for p in self.params]


class ModelLowering(ExprLowering):
    def __init__(self, model: ast.ModelDef, cells: dict[str, ast.CellDef],
                 stateful: bool = False):
        self.st = _State(NameGen())
        self.stateful = stateful
        # stateful: (output name, final state, name of the initial-state input it feeds)
        self.state_outputs: list[tuple[str, Var, str]] = []
        dims: dict[str, Dim] = {}
        for d in model.dims:
            if d.name in dims:
                raise error("E210", f"size '{d.name}' is declared twice", d.span)
            if d.name == "B":
                raise error("E217", "'B' is reserved for the batch size, which is implicit",
                            d.span, hint="choose another name for this size")
            if d.default is not None and not 1 <= d.default <= MAX_SIZE:
                raise error("E306", f"size {d.name} = {d.default} is out of range (1 to "
                            f"{MAX_SIZE})", d.span)
            dims[d.name] = Dim.of(d.name)
        super().__init__(Builder(self.st.names), dims, {})
        self.model = model
        self.cells = cells
        self.env: dict[str, Value | LayerValue] = {}
        self.defined_at: dict[str, Span] = {}
        self.layer_name = "layer"
        self.layers: set[str] = set()

    # names ----------------------------------------------------------------------------------
    def known_names(self) -> list[str]:
        return list(self.env) + list(self.cells) + ["last", "mean", "repeat", "reverse",
                                                     "conv1d", "dense"]

    def resolve(self, name: ast.Name) -> Value:
        v = self.env.get(name.id)
        if v is None:
            hint = did_you_mean(name.id, list(self.env) + list(self.dims))
            if name.id in self.dims:
                raise error("E213", f"'{name.id}' is a size, not a value", name.span)
            raise error("E202", f"unknown name '{name.id}'", name.span, hint=hint)
        if isinstance(v, LayerValue):
            return v.outputs if len(v.outputs) > 1 else v.outputs[0]
        return v

    def unique_layer(self, hint: str) -> str:
        """Layer names prefix parameter names; they live apart from internal value names."""
        return unique_name(hint, self.layers)

    def mask_of(self, x: Var) -> Var:
        return self.st.masks[x.shape[0]]

    def define(self, name: str, span: Span, v: Value | LayerValue) -> None:
        if name in self.dims:
            raise error("E210", f"'{name}' is already the name of a size of model "
                        f"'{self.model.name}'", span, hint="use another name")
        if name in self.env:
            first = self.defined_at.get(name)
            raise error("E210", f"'{name}' is already defined", span,
                        hint=f"'{name}' was first defined on line {first.line}; each name is "
                        "defined once" if first else None)
        self.env[name] = v
        self.defined_at[name] = span
        vals = v.outputs if isinstance(v, LayerValue) else (v if isinstance(v, tuple) else (v,))
        self.b.named.update(x.name for x in vals if isinstance(x, Var))

    # statements -----------------------------------------------------------------------------
    def lower_model(self) -> Program:
        outputs: list[tuple[str, Var]] = []
        for s in self.model.body:
            match s:
                case ast.InputDecl():
                    self.input_decl(s)
                case ast.ParamDecl():
                    shape = tuple(self.lin(d) for d in s.dims)
                    v = Var(self.st.names.fresh(s.name), TensorType(shape))
                    self.st.params.append(Param(v, lower_init(s.init, len(shape), self), s.span))
                    self.define(s.name, s.span, v)
                case ast.Assign():
                    self.assign(s)
                case ast.OutputDecl():
                    self.layer_name = s.name
                    v = self.single(s.value)
                    if not isinstance(v, Var):
                        raise error("E214", "an output must depend on the inputs", s.span)
                    if v in self.st.param_vars():
                        raise error("E214", f"output '{s.name}' is a parameter; outputs must "
                                    "depend on the inputs", s.span)
                    v = self.b.rename(v, s.name)
                    self.define(s.name, s.span, v)
                    outputs.append((s.name, v))
        if not outputs:
            raise error("E215", f"model '{self.model.name}' has no outputs", self.model.span,
                        hint="add a line such as: output y = h @ Wy")
        for _name, v in self.st.state_inputs:
            self.st.inputs.append(InputInfo(v, "state", None, optional=True))
        # output names are identifiers, so ``final:...`` never clashes with one
        outputs.extend((out_name, v) for out_name, v, _ in self.state_outputs)
        return Program(
            self.model.name, tuple(self.st.inputs), tuple(self.st.params), tuple(self.b.eqns),
            tuple(v for _, v in outputs), tuple(n for n, _ in outputs),
            tuple((d.name, d.default) for d in self.model.dims), tuple(self.st.derived))

    def lin(self, d: ast.LinDim) -> Dim:
        out = Dim.of(d.const)
        for n, k in d.terms:
            if n not in self.dims:
                header = ", ".join([x.name for x in self.model.dims] + [n])
                raise error("E304", f"unknown size '{n}'", _name_span(d.span, n),
                            hint=did_you_mean(n, self.dims) or f"add it to the model header: "
                            f"model {self.model.name}({header})")
            out = out + self.dims[n].scale(k)
        if sign(out) in (0, -1):
            raise error("E306", f"a size must be positive, but this is {out}", d.span)
        return out

    def input_decl(self, s: ast.InputDecl) -> None:
        feat = self.lin(s.dim)
        if s.kind == "seq":
            time = Dim.of(f"T:{s.name}")
            v = Var(self.st.names.fresh(s.name), TensorType((time, BATCH, feat)))
            self.st.inputs.append(InputInfo(v, "seq", time))
            m = Var(self.st.names.fresh(f"mask.{s.name}"), TensorType((time, BATCH, ONE)))
            self.st.inputs.append(InputInfo(m, "mask", time))
            self.st.masks[time] = m
        elif s.kind == "vec":
            v = Var(self.st.names.fresh(s.name), TensorType((BATCH, feat)))
            self.st.inputs.append(InputInfo(v, "vec"))
        else:
            raise error("E216", f"unknown input kind '{s.kind}'", s.kind_span,
                        hint="inputs are seq[F] (one vector per step) or vec[F] (one per sequence)")
        self.define(s.name, s.span, v)

    def assign(self, s: ast.Assign) -> None:
        self.layer_name = s.targets[0][0]
        if isinstance(s.value, ast.Over):
            lv = self.over_layer(s.value)
            if len(s.targets) == 1:
                self.define(s.targets[0][0], s.targets[0][1], lv)
                return
            if len(lv.outputs) != len(s.targets):
                raise error("E209", f"{len(s.targets)} names on the left but the layer gives "
                            f"{len(lv.outputs)} output(s)", s.span,
                            hint=targets_hint(len(lv.outputs)))
            for (n, sp), v in zip(s.targets, lv.outputs, strict=True):
                self.define(n, sp, v)
            return
        v = self.lower(s.value)
        vals = v if isinstance(v, tuple) else (v,)
        if len(vals) != len(s.targets):
            raise error("E209", f"{len(s.targets)} name(s) on the left but {len(vals)} value(s) "
                        "on the right", s.span, hint=targets_hint(len(vals)))
        for (n, sp), val in zip(s.targets, vals, strict=True):
            if isinstance(val, Var) and len(set(vals)) == len(vals):
                val = self.b.rename(val, n)
            self.define(n, sp, val)

    # layers ---------------------------------------------------------------------------------
    def over(self, e: ast.Over) -> Value:
        lv = self.over_layer(e)
        return lv.outputs if len(lv.outputs) > 1 else lv.outputs[0]

    def over_layer(self, e: ast.Over) -> LayerValue:
        x = check_operand_is_seq(self.single(e.seq), e.seq.span)
        init = None
        if e.init is not None:
            if not isinstance(e.init, ast.Name) or not isinstance(self.env.get(e.init.id),
                                                                    LayerValue):
                what = (f"'{e.init.id}' is not a layer" if isinstance(e.init, ast.Name)
                        else "this is not a layer name")
                raise error("E408", f"'from' takes the name of an earlier layer, but {what}",
                            e.init.span, hint="name a layer defined as: enc = lstm(H) over x; "
                            "its final states become this layer's initial states")
            init = self.env[e.init.id]
        name = self.unique_layer(self.layer_name)
        return self.apply_layer(e.layer, x, name, init)  # type: ignore[arg-type]

    def apply_layer(self, spec: ast.Expr, x: Var, name: str, init: LayerValue | None,
                    ) -> LayerValue:
        if not isinstance(spec, ast.Call):
            raise error("E409", "expected a layer such as lstm(H), stack(lstm(H), 2) or "
                        "bidir(gru(H))", spec.span)
        if spec.func == "stack":
            if spec.kwargs:
                raise error("E411", f"stack has no option '{spec.kwargs[0][0]}'",
                            spec.kwargs[0][1].span, hint="stack(lstm(H), 2)")
            return self.stack(spec, x, name, init)
        if spec.func == "bidir":
            return self.bidir(spec, x, name, init)
        cell = self.cells.get(spec.func)
        if cell is None:
            raise error("E401", f"unknown cell '{spec.func}'", spec.func_span,
                        hint=did_you_mean(spec.func, list(self.cells) + ["stack", "bidir"]))
        finals = None
        if init is not None:
            if init.finals is None:
                raise error("E410", f"the 'from' layer has {len(init.sub or [])} sublayers but "
                            f"'{spec.func}' is a single cell", spec.span,
                            hint="'from' needs the same layer structure on both sides, e.g. "
                            "stack(lstm(H), 2) over y from enc")
            finals = init.finals
        n0 = len(self.st.state_inputs)
        res = apply_cell(cell, spec, x, self.mask_of(x), name, finals, self, self.b,
                         self.st.params, self.st.state_inputs)
        if self.stateful:
            self._record_finals(spec, name, res.finals, self.st.state_inputs[n0:])
        return LayerValue(tuple(res.outputs.values()), res.finals, None, cell.name)

    def _record_finals(self, spec: ast.Call, name: str, finals: dict[str, Var],
                       fed: list[tuple[str, Var]]) -> None:
        """Stateful models output each final state to feed back as the initial state of the
        next chunk; that needs every state of the layer to be an initial-state input."""
        if len(fed) != len(finals):
            raise error("E219", f"layer '{name}' cannot be run statefully: its initial states "
                        "come from a 'from' layer or from a state initializer, not from "
                        "initial-state inputs", spec.span,
                        hint="compile without stateful=True, or declare the cell's states "
                        "without an initializer")
        for (s, v), (input_name, _) in zip(finals.items(), fed, strict=True):
            self.state_outputs.append((f"final:{name}.{s}", v, input_name))

    def stack(self, spec: ast.Call, x: Var, name: str, init: LayerValue | None) -> LayerValue:
        if len(spec.args) != 2:
            raise error("E411", "stack takes a layer and a number of layers: stack(lstm(H), 2)",
                        spec.span)
        n = self.int_arg(spec.args[1], "the number of layers", 1, MAX_LAYERS)
        if init is not None and (init.sub is None or len(init.sub) != n):
            raise error("E410", f"'from' layer does not have {n} sublayers to initialize "
                        "this stack", spec.span)
        subs = []
        for i in range(n):
            lv = self.apply_layer(spec.args[0], x, f"{name}.{i}", init.sub[i] if init else None)
            if len(lv.outputs) != 1:
                raise error("E412", "stacked cells must have exactly one output", spec.span)
            subs.append(lv)
            x = lv.outputs[0]
        return LayerValue((x,), None, subs)

    def bidir(self, spec: ast.Call, x: Var, name: str, init: LayerValue | None) -> LayerValue:
        merge = "concat"
        if len(spec.args) == 2 and isinstance(spec.args[1], ast.Name):
            merge = spec.args[1].id
        for k, v in spec.kwargs:
            if k == "merge" and isinstance(v, ast.Name):
                merge = v.id
            else:
                raise error("E413", f"bidir has no option '{k}'", v.span)
        if merge not in ("concat", "sum") or not 1 <= len(spec.args) <= 2:
            raise error("E413", "bidir takes a layer and merge=concat or merge=sum", spec.span)
        if init is not None and (init.sub is None or len(init.sub) != 2):
            raise error("E410", "'from' layer is not bidirectional", spec.span)
        if self.stateful:
            raise error("E219", f"bidirectional layer '{name}' cannot be run statefully: its "
                        "backward direction needs the whole sequence", spec.span,
                        hint="stream only unidirectional layers; compile without "
                        "stateful=True to run bidir layers over whole sequences")
        mask = self.mask_of(x)
        f = self.apply_layer(spec.args[0], x, f"{name}.fwd", init.sub[0] if init else None)
        xr = self.b.emit("reverse", (x, mask), spec.span, f"{name}.xrev")
        r = self.apply_layer(spec.args[0], xr, f"{name}.bwd", init.sub[1] if init else None)
        if len(f.outputs) != 1:
            raise error("E412", "bidirectional cells must have exactly one output", spec.span)
        rb = self.b.emit("reverse", (r.outputs[0], mask), spec.span, f"{name}.bwd_out")
        op = "concat" if merge == "concat" else "add"
        out = self.b.emit(op, (f.outputs[0], rb), spec.span, name)
        return LayerValue((out,), None, [f, r])

    # sequence functions ---------------------------------------------------------------------
    def special(self, e: ast.Call) -> Value | None:
        match e.func:
            case "last" | "mean" | "reverse":
                if len(e.args) != 1:
                    raise error("E206", f"{e.func}() takes one sequence", e.span)
                x = check_operand_is_seq(self.single(e.args[0]), e.args[0].span, f"{e.func}()")
                return self.b.emit(e.func, (x, self.mask_of(x)), e.span, f"{e.func}")
            case "repeat":
                return self.repeat(e)
            case "conv1d":
                return self.conv1d(e)
            case "dense":
                return self.dense(e)
        if e.func in self.cells or e.func in ("stack", "bidir"):
            call = e.span.source.line(e.span.line)[e.span.col - 1 : e.span.end_col - 1] if (
                e.span.line == e.span.end_line) else f"{e.func}(...)"
            raise error("E414", f"'{e.func}' is a layer; apply it to a sequence with 'over'",
                        e.span, hint=f"for example: {call} over x")
        return None

    def repeat(self, e: ast.Call) -> Var:
        if len(e.args) != 2:
            raise error("E206", "repeat(v, x) repeats vector v over the steps of sequence x "
                        "(or a fixed number of steps)", e.span)
        v = self.single(e.args[0])
        if not isinstance(v, Var) or len(v.shape) != 2:
            raise error("E206", f"repeat() needs a vector, got {describe(v)}", e.args[0].span)
        if isinstance(e.args[1], ast.Num):
            n = self.int_arg(e.args[1], "the number of steps", 1, 1 << 20)
            time = Dim.of(n)
            if time not in self.st.masks:
                z = self.b.emit("zeros", (), e.span, "ones_mask", {"shape": (time, BATCH, ONE)})
                from rnnlang.ir.nodes import Const
                self.st.masks[time] = self.b.emit("add", (z, Const(1.0)), e.span, "mask_const")
        else:
            x = check_operand_is_seq(self.single(e.args[1]), e.args[1].span, "repeat()")
            time = x.shape[0]
        return self.b.emit("repeat", (v,), e.span, "repeat", {"time": time})

    def _kw(self, e: ast.Call, names: tuple[str, ...]) -> dict[str, ast.Expr]:
        got: dict[str, ast.Expr] = dict(zip(names, e.args[1:], strict=False))
        for k, v in e.kwargs:
            if k not in names:
                raise error("E415", f"{e.func}() has no argument '{k}'", v.span,
                            hint=did_you_mean(k, names))
            got[k] = v
        return got

    def conv1d(self, e: ast.Call) -> Var:
        if not e.args:
            raise error("E206", "conv1d(x, channels, kernel, stride=1, padding=0)", e.span)
        x = check_operand_is_seq(self.single(e.args[0]), e.args[0].span, "conv1d()")
        kw = self._kw(e, ("channels", "kernel", "stride", "padding"))
        if "channels" not in kw or "kernel" not in kw:
            raise error("E206", "conv1d needs channels and kernel", e.span,
                        hint="conv1d(x, channels=16, kernel=3, padding=1)")
        ch = self.size(kw["channels"], "channels")
        k = self.int_arg(kw["kernel"], "kernel", 1, 1024)
        stride = self.int_arg(kw["stride"], "stride", 1, 1024) if "stride" in kw else 1
        pad = self.int_arg(kw["padding"], "padding", 0, 1024) if "padding" in kw else 0
        name = self.unique_layer(self.layer_name)
        w = Var(self.st.names.fresh(f"{name}.W"), TensorType((Dim.of(k), features(x), ch)))
        bias = Var(self.st.names.fresh(f"{name}.b"), TensorType((ch,)))
        self.st.params += [Param(w, lower_init(None, 3, self), e.span),
                           Param(bias, lower_init(None, 1, self), e.span)]
        mask = self.mask_of(x)
        xm = self.b.emit("mul", (x, mask), e.span, f"{name}.in")
        if stride == 1 and 2 * pad == k - 1:
            time = x.shape[0]
        else:
            time = Dim.of(f"T:{name}")
            src = x.shape[0].symbols[0] if x.shape[0].symbols else str(x.shape[0].const)
            self.st.derived.append((f"T:{name}", "conv", (src, k, stride, pad)))
            m = Var(self.st.names.fresh(f"mask.{name}"), TensorType((time, BATCH, ONE)))
            self.st.inputs.append(InputInfo(m, "mask", time))
            self.st.masks[time] = m
        return self.b.emit("conv1d", (xm, w, bias), e.span, name,
                           {"stride": stride, "padding": pad, "time": time, "kernel": k})

    def dense(self, e: ast.Call) -> Var:
        if len(e.args) < 2:
            raise error("E206", "dense(x, size, act=identity)", e.span)
        x = self.single(e.args[0])
        if not isinstance(x, Var) or x.shape[-2:-1] != (BATCH,):
            raise error("E206", f"dense() needs a vector or sequence, got {describe(x)}",
                        e.args[0].span)
        n = self.size(e.args[1], "the size of dense()")
        kw = self._kw(e, ("size", "act"))
        act = kw.get("act")
        name = self.unique_layer(self.layer_name)
        w = Var(self.st.names.fresh(f"{name}.W"), TensorType((features(x), n)))
        bias = Var(self.st.names.fresh(f"{name}.b"), TensorType((n,)))
        self.st.params += [Param(w, lower_init(None, 2, self), e.span),
                           Param(bias, lower_init(None, 1, self), e.span)]
        y = self.b.emit("matmul", (x, w), e.span, f"{name}.xW")
        y = self.b.emit("add", (y, bias), e.span, f"{name}.pre")
        if act is not None:
            call = ast.Call(act.id if isinstance(act, ast.Name) else "?", (), (), act.span,
                            act.span)
            from rnnlang.ir.ops import USER_FUNCTIONS
            if call.func not in USER_FUNCTIONS:
                raise error("E404", "act must be an activation: " + ", ".join(USER_FUNCTIONS),
                            act.span, hint=did_you_mean(call.func, USER_FUNCTIONS))
            y = self.b.emit(call.func, (y,), e.span, name)
        return y


def _name_span(span: Span, name: str) -> Span:
    """The span of ``name`` inside ``span`` when it is on one line (else ``span``)."""
    if span.end_line != span.line:
        return span
    text = span.source.line(span.line)[span.col - 1 : span.end_col - 1]
    m = re.search(rf"\b{re.escape(name)}\b", text)
    if m is None:
        return span
    return Span(span.source, span.line, span.col + m.start(), span.line, span.col + m.end())


def lower_model(model: ast.ModelDef, cells: dict[str, ast.CellDef]) -> Program:
    return ModelLowering(model, cells).lower_model()


def lower_model_stateful(model: ast.ModelDef, cells: dict[str, ast.CellDef],
                         ) -> tuple[Program, dict[str, str]]:
    """Lower ``model`` with every layer's final states as extra outputs ``final:<layer>.<s>``;
    also returns output name -> the initial-state input (``<layer>.<s>0``) it feeds."""
    low = ModelLowering(model, cells, stateful=True)
    prog = low.lower_model()
    return prog, {o: i for o, _, i in low.state_outputs}
