"""What a spec wires together, read from its AST: the data behind the folded and unrolled views.

A `Net` is a list of `Unit`s (an input, one recurrent state or output of one layer, a
model-level value, a convolution, a bidirectional merge) and `Link`s between them. A link
inside a cell may cross time steps (``delay`` k: the source at step t-k feeds the target at
step t); links at model level say which steps of the source feed which step of the target
(``rel``: the same step, the last/first step, all steps, the mirrored step of a reversal, or a
convolution window). Names follow the lowering exactly (layers ``enc.0``, ``enc.fwd``;
parameters ``enc.0.W``), so every parameter of the compiled model can be found in a picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnlang.ir.ops import USER_FUNCTIONS
from rnnlang.lower.builder import unique_name
from rnnlang.lower.cell import state_names
from rnnlang.syntax import ast

IN = "@in"  # the cell's input port, as a dependency source


def span_text(span: object) -> str:
    """Source text of a span on one line: comments dropped, whitespace collapsed."""
    src = span.source  # type: ignore[attr-defined]
    line, col, end_line, end_col = span.line, span.col, span.end_line, span.end_col  # type: ignore[attr-defined]
    parts = []
    for n in range(line, end_line + 1):
        text = src.line(n)
        a = col - 1 if n == line else 0
        b = end_col - 1 if n == end_line else len(text)
        piece = text[a:b]
        if "#" in piece:
            piece = piece[: piece.index("#")]
        parts.append(piece.strip())
    return " ".join(p for p in parts if p)


def dim_text(d: ast.LinDim) -> str:
    terms = [(f"{k}*{n}" if k != 1 else n) for n, k in d.terms]
    if d.const or not terms:
        terms.append(str(d.const))
    return " + ".join(terms).replace("+ -", "- ")


# --- one cell ---------------------------------------------------------------------------------
@dataclass
class CellDeps:
    """For each recurrent state or output of a cell: what it is computed from.

    ``deps[v][(src, k)]`` are the weights on the way from ``src`` read at ``t-k`` (``src`` is
    `IN` for the input port or the name of another state/output) to ``v`` at ``t``.
    """

    nodes: list[str]
    states: list[str]
    dims: dict[str, str]
    deps: dict[str, dict[tuple[str, int], list[str]]]
    biases: dict[str, list[str]]
    acts: dict[str, list[str]]
    params: dict[str, str]  # param name -> dims text


def _delay(e: ast.Expr) -> int:
    if isinstance(e, ast.BinOp) and e.op == "-" and isinstance(e.right, ast.Num):
        return int(e.right.value)
    return 0


def analyze_cell(cell: ast.CellDef, fns: dict[str, str] | None = None) -> CellDeps:
    """Dependencies of each state/output through the cell's local equations."""
    fn_decls = {s.name: s.default for s in cell.body if isinstance(s, ast.FnDecl)}
    fn_map = dict(fn_decls)
    fn_map.update(fns or {})
    states = state_names(cell)
    plain_outs = [p.name for p in cell.outputs if p.name not in states]
    nodes = states + plain_outs
    ports = {p.name for p in cell.inputs}
    params = {s.name: ", ".join(dim_text(d) for d in s.dims)
              for s in cell.body if isinstance(s, ast.ParamDecl)}
    dims: dict[str, str] = {p.name: dim_text(p.dim) for p in cell.outputs}
    for s in cell.body:
        if isinstance(s, ast.StateDecl):
            dims.setdefault(s.name, dim_text(s.dim))
    exprs: dict[str, ast.Expr] = {}
    for s in cell.body:
        if isinstance(s, ast.Assign):
            for n, _ in s.targets:
                exprs[n] = s.value
    out = CellDeps(nodes, states, dims, {}, {}, {}, params)

    def walk(e: ast.Expr, ws: tuple[str, ...], node: str, seen: frozenset[str]) -> None:
        deps = out.deps[node]

        def add(key: tuple[str, int]) -> None:
            lst = deps.setdefault(key, [])
            lst.extend(w for w in ws if w not in lst)

        match e:
            case ast.Name(id=n):
                if n in ports:
                    add((IN, 0))
                elif n in nodes and n != node:
                    add((n, 0))
                elif n in exprs and n not in nodes and n not in seen:
                    walk(exprs[n], ws, node, seen | {n})
                elif n in params and n not in out.biases[node]:
                    out.biases[node].append(n)
            case ast.Index(base=ast.Name(id=n), index=idx):
                k = _delay(idx)
                if k == 0:
                    walk(e.base, ws, node, seen)
                elif n in ports:
                    add((IN, k))
                elif n in nodes:
                    add((n, k))
            case ast.BinOp(op="@", left=a, right=ast.Name(id=w)) if w in params:
                walk(a, ws + (w,), node, seen)
            case ast.BinOp(op="*", left=ast.Name(id=w), right=b) if w in params:
                walk(b, ws + (w,), node, seen)
            case ast.BinOp(op="*", left=a, right=ast.Name(id=w)) if w in params:
                walk(a, ws + (w,), node, seen)
            case ast.Call(func=f):
                act = fn_map.get(f, f if f in USER_FUNCTIONS else None)
                if act is not None and act not in out.acts[node]:
                    out.acts[node].append(act)
                for c in ast.expr_children(e):
                    walk(c, ws, node, seen)
            case _:
                for c in ast.expr_children(e):
                    walk(c, ws, node, seen)

    for v in nodes:
        out.deps[v] = {}
        out.biases[v] = []
        out.acts[v] = []
        if v in exprs:
            walk(exprs[v], (), v, frozenset({v}))
    return out


# --- the model --------------------------------------------------------------------------------
@dataclass
class Unit:
    id: str
    kind: str  # input | state | cellout | expr | output | conv | dense | merge
    name: str
    seq: bool = True
    axis: str | None = None
    layer: str = ""
    cell: str = ""
    direction: int = 1  # -1: the backward half of a bidirectional layer
    text: str = ""  # expression or call text
    dim: str = ""
    info: list[str] = field(default_factory=list)  # extra label lines
    params: list[str] = field(default_factory=list)  # full names of parameters shown here
    output: str = ""  # the model output this unit is, if any


@dataclass
class Link:
    src: str
    dst: str
    delay: int = 0
    weights: tuple[str, ...] = ()
    full: tuple[str, ...] = ()  # full parameter names of the weights
    rel: str = "same"  # same | mirror | last | first | all | conv | init
    conv: tuple[int, int, int] = (1, 1, 0)  # kernel, stride, padding


@dataclass
class Layer:
    name: str
    cell: str
    call: str
    units: list[str]
    direction: int
    init_from: dict[str, str] | None = None  # state -> unit whose final value starts it
    params: list[str] = field(default_factory=list)  # full names


@dataclass
class Net:
    model: str
    header: str
    source: str
    units: dict[str, Unit] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # every parameter, full names
    whole: list[str] = field(default_factory=list)  # why an unrolled view starts at step 1

    def layer_of(self, unit: Unit) -> Layer | None:
        for lay in self.layers:
            if unit.id in lay.units:
                return lay
        return None


@dataclass
class _Val:
    units: tuple[str, ...]
    seq: bool
    axis: str | None


@dataclass
class _LayerVal:
    outputs: tuple[str, ...]
    axis: str | None
    finals: dict[str, str] | None = None
    sub: list[_LayerVal] | None = None


class _Builder:
    def __init__(self, model: ast.ModelDef, cells: dict[str, ast.CellDef]):
        header = ", ".join(d.name + (f" = {d.default}" if d.default is not None else "")
                           for d in model.dims)
        self.net = Net(model.name, f"model {model.name}({header})", model.span.source.name)
        self.model = model
        self.cells = cells
        self.env: dict[str, _Val | _LayerVal | str] = {}  # str: a parameter's full name
        self.layers: set[str] = set()
        self.layer_name = "layer"
        self.n = 0

    # units -------------------------------------------------------------------------------
    def unit(self, kind: str, name: str, seq: bool, axis: str | None, **kw: object) -> Unit:
        self.n += 1
        u = Unit(f"u{self.n}", kind, name, seq, axis if seq else None, **kw)  # type: ignore[arg-type]
        self.net.units[u.id] = u
        return u

    def link(self, src: str, dst: str, **kw: object) -> None:
        self.net.links.append(Link(src, dst, **kw))  # type: ignore[arg-type]

    def unique_layer(self, hint: str) -> str:
        """Layer names prefix parameter names; they live apart from internal value names."""
        return unique_name(hint, self.layers)

    def whole(self, why: str) -> None:
        if why not in self.net.whole:
            self.net.whole.append(why)

    # statements ---------------------------------------------------------------------------
    def build(self) -> Net:
        for s in self.model.body:
            match s:
                case ast.InputDecl():
                    seq = s.kind == "seq"
                    u = self.unit("input", s.name, seq, s.name, dim=f"{s.kind}[{dim_text(s.dim)}]")
                    if not seq:
                        self.whole("a vector input")
                    self.env[s.name] = _Val((u.id,), seq, u.axis)
                case ast.ParamDecl():
                    self.env[s.name] = s.name
                    self.net.params.append(s.name)
                case ast.Assign():
                    self.assign(s)
                case ast.OutputDecl():
                    self.output(s)
        return self.net

    def assign(self, s: ast.Assign) -> None:
        self.layer_name = s.targets[0][0]
        names = [n for n, _ in s.targets]
        v = self.value(s.value, ", ".join(names), "expr")
        if isinstance(v, _LayerVal) and len(names) == 1:
            self.env[names[0]] = v
            return
        units = v.outputs if isinstance(v, _LayerVal) else v.units
        if len(units) == len(names):
            for n, u in zip(names, units, strict=True):
                self.env[n] = _Val((u,), self.net.units[u].seq, self.net.units[u].axis)
        else:  # a, b = split(v, 2): one node for the statement
            for n in names:
                self.env[n] = _Val(units, self.net.units[units[0]].seq,
                                   self.net.units[units[0]].axis)

    def output(self, s: ast.OutputDecl) -> None:
        self.layer_name = s.name
        v = self.value(s.value, s.name, "output")
        units = v.outputs if isinstance(v, _LayerVal) else v.units
        for uid in units:
            u = self.net.units[uid]
            if u.output:  # already an output: a second name for it
                continue
            u.output = s.name
            if u.kind == "expr":
                u.kind = "output"
        self.env[s.name] = _Val(units, self.net.units[units[0]].seq,
                                self.net.units[units[0]].axis)

    def value(self, e: ast.Expr, name: str, kind: str) -> _Val | _LayerVal:
        """The statement's right-hand side: an existing value, a layer, or a new node."""
        if isinstance(e, ast.Name):
            got = self.env.get(e.id)
            if isinstance(got, _Val | _LayerVal):
                if kind == "output" and isinstance(got, _Val) and any(
                        self.net.units[u].kind == "input" for u in got.units):
                    return self.expr_unit(e, name, kind)
                return got
        if isinstance(e, ast.Over):
            return self.over(e)
        if isinstance(e, ast.Call) and e.func in ("conv1d", "dense"):
            return self.conv_dense(e, name)
        return self.expr_unit(e, name, kind)

    def expr_unit(self, e: ast.Expr, name: str, kind: str) -> _Val:
        deps: list[tuple[str, tuple[str, ...], str]] = []
        axis = self.collect(e, (), "same", deps)
        u = self.unit(kind, name, axis is not None, axis, text=span_text(e.span),
                      params=self.params_in(e))
        for src, ws, rel in deps:
            self.link(src, u.id, weights=ws, full=ws, rel=rel)
        return _Val((u.id,), u.seq, u.axis)

    def params_in(self, e: ast.Expr) -> list[str]:
        """Model parameters an expression names (not those of layers inside it)."""
        if isinstance(e, ast.Name):
            got = self.env.get(e.id)
            return [got] if isinstance(got, str) else []
        if isinstance(e, ast.Over) or (isinstance(e, ast.Call) and e.func in ("conv1d",
                                                                             "dense")):
            return []
        out: list[str] = []
        for c in ast.expr_children(e):
            out.extend(p for p in self.params_in(c) if p not in out)
        return out

    def as_val(self, e: ast.Expr) -> _Val:
        if isinstance(e, ast.Name):
            got = self.env.get(e.id)
            if isinstance(got, _Val):
                return got
            if isinstance(got, _LayerVal):
                return _Val(got.outputs, True, got.axis)
        v = self.value(e, "", "expr")
        if isinstance(v, _LayerVal):
            return _Val(v.outputs, True, v.axis)
        return v

    def collect(self, e: ast.Expr, ws: tuple[str, ...], rel: str,
                deps: list[tuple[str, tuple[str, ...], str]]) -> str | None:
        """Record the units ``e`` reads (with weights and step relation); return its axis."""
        match e:
            case ast.Name(id=n):
                got = self.env.get(n)
                units: tuple[str, ...] = ()
                axis = None
                if isinstance(got, _Val):
                    units, axis = got.units, got.axis
                elif isinstance(got, _LayerVal):
                    units, axis = got.outputs, got.axis
                for u in units:
                    deps.append((u, ws, rel))
                return axis
            case ast.Over():
                lv = self.over(e)
                for u in lv.outputs:
                    deps.append((u, ws, rel))
                return lv.axis
            case ast.Call(func="conv1d" | "dense"):
                v = self.conv_dense(e, "")
                for u in v.units:
                    deps.append((u, ws, rel))
                return v.axis
            case ast.Call(func="last" | "mean", args=args):
                self.whole(f"{e.func}()")
                new = "all" if e.func == "mean" else ("first" if rel == "mirror" else "last")
                for a in args:
                    self.collect(a, ws, new, deps)
                return None
            case ast.Call(func="reverse", args=args):
                self.whole("reverse()")
                flip = {"same": "mirror", "mirror": "same", "last": "first", "first": "last"}
                axis = None
                for a in args:
                    axis = axis or self.collect(a, ws, flip.get(rel, rel), deps)
                return axis
            case ast.Call(func="repeat", args=args):
                self.whole("repeat()")
                if args:
                    self.collect(args[0], ws, rel, deps)
                if len(args) > 1:
                    if isinstance(args[1], ast.Num):
                        return f"repeat {args[1].text}"
                    return self.collect(args[1], ws, rel, [])
                return None
            case ast.BinOp(op="@", left=a, right=ast.Name(id=w)) if isinstance(
                    self.env.get(w), str):
                return self.collect(a, ws + (w,), rel, deps)
            case _:
                axis = None
                for c in ast.expr_children(e):
                    got = self.collect(c, ws, rel, deps)
                    axis = axis or got
                return axis

    # layers -------------------------------------------------------------------------------
    def over(self, e: ast.Over) -> _LayerVal:
        x = self.as_val(e.seq)
        init = None
        if isinstance(e.init, ast.Name):
            got = self.env.get(e.init.id)
            if isinstance(got, _LayerVal):
                init = got
                self.whole("'from' (encoder to decoder)")
        name = self.unique_layer(self.layer_name)
        return self.apply(e.layer, x, name, init, 1)  # type: ignore[arg-type]

    def apply(self, spec: ast.Call, x: _Val, name: str, init: _LayerVal | None,
              direction: int) -> _LayerVal:
        if spec.func == "stack":
            n = int(spec.args[1].value) if isinstance(spec.args[1], ast.Num) else 1
            subs = []
            for i in range(n):
                lv = self.apply(spec.args[0], x, f"{name}.{i}",  # type: ignore[arg-type]
                                init.sub[i] if init and init.sub else None, direction)
                subs.append(lv)
                x = _Val(lv.outputs[:1], True, lv.axis)
            return _LayerVal(x.units, x.axis, None, subs)
        if spec.func == "bidir":
            merge = "concat"
            for k, v in spec.kwargs:
                if k == "merge" and isinstance(v, ast.Name):
                    merge = v.id
            if len(spec.args) == 2 and isinstance(spec.args[1], ast.Name):
                merge = spec.args[1].id
            sub0 = init.sub[0] if init and init.sub else None
            sub1 = init.sub[1] if init and init.sub and len(init.sub) > 1 else None
            f = self.apply(spec.args[0], x, f"{name}.fwd", sub0, direction)  # type: ignore[arg-type]
            r = self.apply(spec.args[0], x, f"{name}.bwd", sub1, -direction)  # type: ignore[arg-type]
            m = self.unit("merge", merge, True, x.axis, layer=name)
            self.link(f.outputs[0], m.id)
            self.link(r.outputs[0], m.id)
            return _LayerVal((m.id,), x.axis, None, [f, r])
        return self.cell_layer(spec, x, name, init, direction)

    def cell_layer(self, call: ast.Call, x: _Val, name: str, init: _LayerVal | None,
                   direction: int) -> _LayerVal:
        cell = self.cells[call.func]
        fn_names = {s.name for s in cell.body if isinstance(s, ast.FnDecl)}
        fns = {k: v.id for k, v in call.kwargs if k in fn_names and isinstance(v, ast.Name)}
        deps = analyze_cell(cell, fns)
        ids: dict[str, str] = {}
        layer = Layer(name, cell.name, span_text(call.span), [], direction)
        decls = {s.name: s for s in cell.body if isinstance(s, ast.StateDecl)}
        for v in deps.nodes:
            kind = "state" if v in deps.states else "cellout"
            info = []
            if deps.acts[v]:
                info.append(", ".join(deps.acts[v]))
            u = self.unit(kind, v, True, x.axis, layer=name, cell=cell.name,
                          direction=direction, dim=deps.dims.get(v, ""), info=info)
            if deps.biases[v]:
                u.info.append("+ " + ", ".join(deps.biases[v]))
                u.params.extend(f"{name}.{b}" for b in deps.biases[v])
            ids[v] = u.id
            layer.units.append(u.id)
        for v in deps.nodes:
            for (src, k), ws in deps.deps[v].items():
                for s_id in (x.units if src == IN else (ids[src],)):
                    self.link(s_id, ids[v], delay=k, weights=tuple(ws),
                              full=tuple(f"{name}.{w}" for w in ws))
        layer.params.extend(f"{name}.{p}" for p in deps.params)
        self.net.params.extend(layer.params)
        if init is not None and init.finals is not None:
            layer.init_from = {}
            for s in deps.states:
                src = init.finals.get(s)
                if src is not None:
                    layer.init_from[s] = src
                    self.link(src, ids[s], rel="init")
        else:
            for s in deps.states:
                d = decls.get(s)
                if d is not None and d.init is not None:
                    full = f"{name}.{s}0"
                    u = self.net.units[ids[s]]
                    u.info.append(f"starts at {s}0 ({d.init.name})")
                    u.params.append(full)
                    layer.params.append(full)
                    self.net.params.append(full)
        self.net.layers.append(layer)
        return _LayerVal(tuple(ids[p.name] for p in cell.outputs), x.axis,
                         {s: ids[s] for s in deps.states})

    def conv_dense(self, e: ast.Call, stmt: str) -> _Val:
        x = self.as_val(e.args[0]) if e.args else _Val((), False, None)
        name = self.unique_layer(self.layer_name)
        kw = dict(zip(("channels", "kernel", "stride", "padding") if e.func == "conv1d"
                      else ("size", "act"), e.args[1:], strict=False))
        kw.update(dict(e.kwargs))

        def num(key: str, default: int) -> int:
            v = kw.get(key)
            return int(v.value) if isinstance(v, ast.Num) else default

        text = span_text(e.span)
        full = (f"{name}.W", f"{name}.b")
        self.net.params.extend(full)
        label = stmt if stmt and stmt == name else name
        if e.func == "conv1d":
            k, s, p = num("kernel", 1), num("stride", 1), num("padding", 0)
            same = s == 1 and 2 * p == k - 1
            if not same:
                self.whole("a strided convolution")
            axis = x.axis if same else f"T:{name}"
            u = self.unit("conv", label, True, axis, layer=name, text=text,
                          info=[f"params {full[0]}, {full[1]}"], params=list(full))
            for src in x.units:
                self.link(src, u.id, weights=("W",), full=full[:1], rel="conv", conv=(k, s, p))
        else:
            u = self.unit("dense", label, x.seq, x.axis, layer=name, text=text,
                          info=[f"params {full[0]}, {full[1]}"], params=list(full))
            for src in x.units:
                self.link(src, u.id, weights=("W",), full=full[:1])
        return _Val((u.id,), u.seq, u.axis)


def build_net(model: ast.ModelDef, cells: dict[str, ast.CellDef]) -> Net:
    """The units and links of ``model`` (which must already lower without errors)."""
    return _Builder(model, cells).build()
