"""The three pictures: the folded network, the network unrolled over K steps, one cell's
equations. Each is a `Graph`; `rnnlang.viz.dot.to_dot` writes it for Graphviz."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from rnnlang.syntax import ast
from rnnlang.viz.dot import Cluster, Graph, Label, Line, plain
from rnnlang.viz.net import Layer, Link, Net, Unit, analyze_cell, dim_text, span_text

MAX_UNROLL = 64
WRAP = 44

FILL = {"input": "#dbe9fb", "state": "#fff1c9", "cellout": "#f1f1f1", "expr": "#ffffff",
        "output": "#dff3e3", "conv": "#eadff7", "dense": "#eadff7", "merge": "#ffffff"}
RECUR = "#1f5fbf"  # color of edges that carry a state to a later step
INIT = "#8a5a00"


def _wrap(text: str, width: int = WRAP) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def _style(u: Unit) -> dict[str, str]:
    attrs = {"style": "filled", "fillcolor": FILL.get(u.kind, "#ffffff")}
    if u.kind == "input":
        attrs["shape"] = "ellipse"
    elif u.kind == "merge":
        attrs.update(shape="circle", margin="0.02", width="0.3")
    elif u.kind in ("state", "cellout"):
        attrs.update(shape="box", style="rounded,filled")
        if u.kind == "state":
            attrs["penwidth"] = "1.6"
    else:
        attrs["shape"] = "box"
    if u.output:
        attrs["peripheries"] = "2"
    tip = []
    if u.text:
        tip.append(f"{u.name} = {u.text}" if u.name else u.text)
    if u.params:
        tip.append("parameters: " + ", ".join(u.params))
    if tip:
        attrs["tooltip"] = "; ".join(tip)
    return attrs


def _head(u: Unit, sub: str | None = None, *, prefix: str = "") -> Line:
    """First label line: the unit's name (bold), a step subscript, its size."""
    name = u.name or ""
    runs: list[tuple[str, str]] = []
    if prefix:
        runs.append((prefix, "small"))
    if u.kind in ("expr", "output", "conv", "dense") and u.text and sub is None:
        if name:
            runs.append((name, "b"))
            runs.append((" = ", ""))
        return tuple(runs)
    runs.append((name or u.text, "b" if u.kind != "merge" else ""))
    if sub is not None:
        runs.append((sub, "sub"))
    if u.dim and sub is None:
        runs.append((f" [{u.dim}]" if u.kind != "input" else f" : {u.dim}", ""))
    return tuple(runs)


def _folded_label(u: Unit) -> Label:
    lines: list[Line] = []
    head = _head(u)
    if u.kind in ("expr", "output", "conv", "dense") and u.text:
        wrapped = _wrap(u.text)
        lines.append(head + ((wrapped[0], ""),))
        lines.extend(((w, ""),) for w in wrapped[1:])
    else:
        lines.append(head)
    for info in u.info:
        lines.extend(((w, "small"),) for w in _wrap(info))
    if u.output and u.output != u.name:
        lines.append(((f"output {u.output}", "small"),))
    elif u.output:
        lines.append((("output", "small"),))
    return tuple(lines)


def _link_label(link: Link, net: Net, *, unrolled: bool = False) -> Label:
    parts = []
    if link.weights:
        parts.append(", ".join(link.weights))
    dst = net.units[link.dst]
    if link.delay and not unrolled:
        sign = "-" if dst.direction > 0 else "+"
        parts.append(f"[t{sign}{link.delay}]")
    if link.rel in ("last", "first", "all", "mirror") and not unrolled:
        parts.append({"last": "last step", "first": "first step", "all": "mean over steps",
                      "mirror": "reversed"}[link.rel])
    if link.rel == "conv" and not unrolled:
        k, s, p = link.conv
        parts.append(f"kernel {k}" + (f", stride {s}" if s != 1 else ""))
    if link.rel == "init":
        parts.append("final state \u2192 initial")
    return plain(" ".join(parts)) if parts else ()


def _edge_attrs(link: Link) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if link.full:
        attrs["tooltip"] = ", ".join(link.full)
    if link.delay:
        attrs.update(color=RECUR, fontcolor=RECUR, penwidth="1.4")
    if link.rel == "init":
        attrs.update(style="dashed", color=INIT, fontcolor=INIT)
    return attrs


def _title(net: Net, what: str) -> Label:
    return ((net.header, "b"),), ((f"{what}   ({net.source})", "small"),)


def _base_graph(net: Net, what: str) -> Graph:
    g = Graph(net.model, _title(net, what))
    g.attrs.update(rankdir="BT", labelloc="t", fontname="Helvetica", nodesep="0.35",
                   ranksep="0.45", charset="UTF-8")
    g.node_attrs.update(fontname="Helvetica", fontsize="11", margin="0.08,0.04")
    g.edge_attrs.update(fontname="Helvetica", fontsize="10", arrowsize="0.7")
    return g


# --- folded --------------------------------------------------------------------------------
def folded_graph(net: Net) -> Graph:
    """Every unit once; recurrent links loop back (labelled ``[t-k]``); layers boxed."""
    g = _base_graph(net, "folded: each state loops back to itself")
    for u in net.units.values():
        g.add_node(u.id, _folded_label(u), **_style(u))
    for lay in net.layers:
        arrow = "" if lay.direction > 0 else "   (runs backwards in time)"
        g.clusters.append(Cluster(
            lay.name, (((lay.name, "b"), (f" = {lay.call}{arrow}", "")),), list(lay.units),
            {"style": "rounded,dashed", "color": "#888888", "fontname": "Helvetica",
             "fontsize": "11", "labelloc": "b",
             "tooltip": f"{lay.name} = {lay.call}; parameters: " + ", ".join(lay.params)}))
    merged: dict[tuple[str, str, int, str], Link] = {}
    handoffs: dict[tuple[str, str], list[Link]] = {}  # 'from': (encoder, decoder) -> links
    for link in net.links:
        if link.rel == "init":
            src_l, dst_l = net.layer_of(net.units[link.src]), net.layer_of(net.units[link.dst])
            if src_l is not None and dst_l is not None:
                handoffs.setdefault((src_l.name, dst_l.name), []).append(link)
                continue
        key = (link.src, link.dst, link.delay, link.rel)
        if key in merged:
            old = merged[key]
            old.weights = old.weights + tuple(w for w in link.weights if w not in old.weights)
            old.full = old.full + tuple(w for w in link.full if w not in old.full)
            continue
        merged[key] = Link(link.src, link.dst, link.delay, link.weights, link.full, link.rel,
                           link.conv)
    loops: dict[str, int] = {}
    for link in merged.values():
        attrs = _edge_attrs(link)
        if link.src == link.dst:  # a second loop on one node goes on its other side
            n = loops[link.src] = loops.get(link.src, 0) + 1
            if n == 2:
                attrs.update(tailport="w", headport="w")
        if link.delay and net.units[link.src].kind not in ("state", "cellout"):
            attrs.update(color="#666666", fontcolor="#444444")  # an input read k steps later
        elif link.delay and link.src != link.dst:
            attrs["constraint"] = "false"
        g.add_edge(link.src, link.dst, _link_label(link, net), **attrs)
    for (src_l, dst_l), links in handoffs.items():
        # one arrow from box to box: the encoder's final states start the decoder
        states = ", ".join(net.units[lk.dst].name for lk in links)
        g.attrs["compound"] = "true"
        g.add_edge(links[-1].src, links[-1].dst, plain(f"final {states} \u2192 initial"),
                   ltail=f"cluster_{src_l}", lhead=f"cluster_{dst_l}", constraint="false",
                   style="dashed", color=INIT, fontcolor=INIT, penwidth="1.4",
                   tooltip=f"{src_l} final state -> {dst_l} initial state")
    return g


# --- unrolled ------------------------------------------------------------------------------
@dataclass
class _Group:
    """What one node per step stands for: a unit, or all states and outputs of one layer."""

    id: str
    units: list[Unit]
    layer: Layer | None

    @property
    def first(self) -> Unit:
        return self.units[0]


@dataclass
class _GLink:
    src: str
    dst: str
    delay: int
    rel: str
    conv: tuple[int, int, int]
    weights: list[str]
    full: list[str]
    via: str  # the state carried by a link from a layer to itself at a later step


class _Unroller:
    def __init__(self, net: Net, steps: int, from_start: bool):
        self.net = net
        self.K = steps
        self.start = from_start or bool(net.whole)
        self.c = 0 if self.start else (steps - 1) // 2
        what = f"unrolled over {steps} steps" + (" from the start" if self.start else "")
        self.g = _base_graph(net, what)
        self.g.attrs.update(newrank="true", ranksep="0.6")
        self.groups: dict[str, _Group] = {}
        self.group_of: dict[str, str] = {}
        for u in net.units.values():
            lay = net.layer_of(u)
            gid = f"L{net.layers.index(lay)}" if lay is not None else u.id
            if gid not in self.groups:
                self.groups[gid] = _Group(gid, [], lay)
            self.groups[gid].units.append(u)
            self.group_of[u.id] = gid
        self.links = self._group_links()
        self.rows: dict[str, list[tuple[int, int, str]]] = {}  # row -> (step, order, node)
        self.made: set[str] = set()
        self.levels = self._levels()

    def _group_links(self) -> list[_GLink]:
        out: dict[tuple[object, ...], _GLink] = {}
        for link in self.net.links:
            gs, gd = self.group_of[link.src], self.group_of[link.dst]
            if gs == gd and not link.delay:
                continue  # inside one step of one layer
            via = self.net.units[link.src].name if gs == gd or link.rel == "init" else ""
            key = (gs, gd, link.delay, link.rel, link.conv, via)
            got = out.get(key)
            if got is None:
                got = out[key] = _GLink(gs, gd, link.delay, link.rel, link.conv, [], [], via)
            got.weights.extend(w for w in link.weights if w not in got.weights)
            got.full.extend(w for w in link.full if w not in got.full)
        return list(out.values())

    def step(self, j: int) -> str:
        if self.start:
            return str(j + 1)
        d = j - self.c
        return "t" if d == 0 else f"t{d:+d}"

    def nid(self, grp: _Group, j: int | None) -> str:
        if j is None or not grp.first.seq:
            return grp.id
        return f"{grp.id}_{j}" if j >= 0 else f"{grp.id}_m{-j}"

    def _levels(self) -> dict[str, int]:
        """Longest path over same-step links: which rows sit above which."""
        level = {gid: 0 for gid in self.groups}
        for _ in range(len(level)):
            changed = False
            for link in self.links:
                if link.delay or link.rel == "init" or link.src == link.dst:
                    continue
                if level[link.dst] < level[link.src] + 1:
                    level[link.dst] = level[link.src] + 1
                    changed = True
            if not changed:
                break
        return level

    def _row_key(self, gid: str) -> str:
        """Layers joined by 'from' share a row, so a decoder continues its encoder's line."""
        for link in self.links:
            if link.rel == "init" and link.dst == gid and link.src != gid:
                return self._row_key(link.src)
        return gid

    def label(self, grp: _Group, sub: str | None) -> Label:
        if grp.layer is None:
            u = grp.first
            if sub is None and u.text and u.kind != "input":
                return _folded_label(u)
            return (_head(u, sub),)
        runs: list[tuple[str, str]] = []
        if len(self.net.layers) > 1:
            runs.append((grp.layer.name + " ", "small"))
        for k, u in enumerate(grp.units):
            if k:
                runs.append((", ", ""))
            runs.append((u.name, "b"))
            if sub is not None:
                runs.append((sub, "sub"))
        return (tuple(runs),)

    def attrs(self, grp: _Group) -> dict[str, str]:
        u = grp.first
        if grp.layer is None:
            return _style(u)
        kinds = {x.kind for x in grp.units}
        attrs = {"shape": "box", "style": "rounded,filled", "penwidth": "1.6",
                 "fillcolor": FILL["state"] if "state" in kinds else FILL["cellout"]}
        params = grp.layer.params
        tip = f"{grp.layer.name} = {grp.layer.call}"
        attrs["tooltip"] = tip + ("; parameters: " + ", ".join(params) if params else "")
        if any(x.output for x in grp.units):
            attrs["peripheries"] = "2"
        return attrs

    def add(self, grp: _Group, j: int | None, *, ghost: bool = False) -> str:
        nid = self.nid(grp, j)
        if nid in self.made:
            return nid
        self.made.add(nid)
        attrs = self.attrs(grp)
        if ghost:
            attrs = {"style": "dashed" + (",rounded" if grp.layer else ""), "color": "#999999",
                     "fontcolor": "#777777", "shape": attrs.get("shape", "box")}
        attrs["group"] = f"{grp.first.axis}:{j}" if j is not None else grp.id
        self.g.add_node(nid, self.label(grp, None if j is None else self.step(j)), **attrs)
        if j is not None:
            self.place(grp, j, nid)
        return nid

    def place(self, grp: _Group, j: int, nid: str) -> None:
        """Put a node on its row; a row runs left to right in time, the decoder after its
        encoder; a backward layer's initial state sits at its right end."""
        key = self._row_key(grp.id)
        order = 0 if key == grp.id else 1
        self.rows.setdefault(key, []).append((order, j, nid))

    def build(self) -> Graph:
        for grp in self.groups.values():
            for j in (range(self.K) if grp.first.seq else [None]):
                self.add(grp, j)
        for link in self.links:
            self.expand(link)
        for row in self.rows.values():
            self.g.rows.append([nid for _, _, nid in sorted(row)])
        self.stack_layers()
        return self.g

    def stack_layers(self) -> None:
        """Layers that would share a rank (parallel layers, the two halves of a bidirectional
        layer) each get their own row, in the order they are defined, bottom to top."""
        by_level: dict[int, list[str]] = {}
        for gid, grp in self.groups.items():
            if grp.layer is None or not grp.first.seq or self._row_key(gid) != gid:
                continue
            by_level.setdefault(self.levels[gid], []).append(gid)
        for gids in by_level.values():
            for a, b in zip(gids, gids[1:], strict=False):
                for j in range(self.K):
                    # two ranks apart: room for the labels of the lower row's arrows
                    self.g.hidden.append((self.nid(self.groups[a], j),
                                          self.nid(self.groups[b], j), 2))

    def initial(self, grp: _Group) -> str:
        """The initial-state node of a layer (step 0 when unrolled from the start)."""
        nid = f"{grp.id}_init"
        if nid not in self.made:
            self.made.add(nid)
            runs: list[tuple[str, str]] = []
            states = [u for u in grp.units if u.kind == "state"]
            for k, u in enumerate(states):
                runs += ([(", ", "")] if k else []) + [(u.name, "b"), ("0", "sub")]
            name = grp.layer.name if grp.layer else grp.id
            self.g.add_node(nid, (tuple(runs),), style="dashed,rounded", color=INIT,
                            fontcolor=INIT, shape="box", tooltip=f"initial state of {name}")
            self.place(grp, -1 if grp.first.direction > 0 else self.K, nid)
        return nid

    def edge(self, src: str, dst: str, link: _GLink, sj: int | None, dj: int | None) -> None:
        parts = []
        if link.via and self._many_states(link.src):
            parts.append(link.via)
        if link.weights:
            parts.append(", ".join(link.weights))
        lab = plain(" \u00b7 ".join(parts)) if parts else ()
        attrs: dict[str, str] = {}
        if link.full:
            attrs["tooltip"] = ", ".join(link.full)
        if (link.delay and self.groups[link.src].layer is not None) or link.rel == "init":
            attrs.update(color=RECUR, fontcolor=RECUR, penwidth="1.4")
        elif link.delay:  # an input read k steps later
            attrs.update(color="#666666", fontcolor="#444444")
        same_row = self._row_key(link.src) == self._row_key(link.dst)
        if same_row and sj is not None and dj is not None and sj > dj:
            # keep time running left to right: draw the edge the other way, arrow reversed
            src, dst = dst, src
            attrs["dir"] = "back"
        elif not same_row and self.levels[link.src] >= self.levels[link.dst]:
            attrs["constraint"] = "false"
        self.g.add_edge(src, dst, lab, **attrs)

    def _many_states(self, gid: str) -> bool:
        return sum(u.kind == "state" for u in self.groups[gid].units) > 1

    def expand(self, link: _GLink) -> None:
        s, d, K = self.groups[link.src], self.groups[link.dst], self.K
        if link.rel == "init":
            return  # drawn where the decoder reads its state before its first step
        direction = d.first.direction
        for j in (range(K) if d.first.seq else [None]):
            if link.delay:
                assert j is not None
                i = j - direction * link.delay
                if 0 <= i < K:
                    self.edge(self.nid(s, i), self.nid(d, j), link, i, j)
                elif s.layer is None:
                    continue  # an input read before the window (or zeros before the start)
                elif not self.start:
                    if link.delay == 1:  # longer links are drawn inside the window only
                        self.edge(self.add(s, i, ghost=True), self.nid(d, j), link, i, j)
                else:
                    src, si = self.init_source(s, link.via)
                    self.edge(src, self.nid(d, j), link, si, j)
                continue
            for i in self.sources(link, s, j):
                self.edge(self.nid(s, i), self.nid(d, j), link, i, j)
        if link.delay == 1 and not self.start and s.layer is not None:
            # states leaving the window for later steps
            for i in range(K):
                j = i + direction * link.delay
                if not 0 <= j < K:
                    self.edge(self.nid(s, i), self.add(d, j, ghost=True), link, i, j)

    def init_source(self, grp: _Group, state: str) -> tuple[str, int]:
        before = -1 if grp.first.direction > 0 else self.K
        lay = grp.layer
        if lay is not None and lay.init_from and state in lay.init_from:
            src = self.groups[self.group_of[lay.init_from[state]]]
            last = self.K - 1 if src.first.direction > 0 else 0
            return self.nid(src, last), before
        return self.initial(grp), before

    def sources(self, link: _GLink, s: _Group, j: int | None) -> list[int | None]:
        K = self.K
        if not s.first.seq:
            return [None]
        rel = link.rel
        if rel == "same" and j is None:
            rel = "all"
        if rel == "same":
            return [j]
        if rel == "mirror":
            return [K - 1 - j] if j is not None else [None]
        if rel == "last":
            return [K - 1]
        if rel == "first":
            return [0]
        if rel == "conv":
            k, st, p = link.conv
            jj = 0 if j is None else j
            return [i for i in (jj * st - p + q for q in range(k)) if 0 <= i < K]
        return list(range(K))


def unrolled_graph(net: Net, steps: int, *, from_start: bool = False) -> Graph:
    """The network over ``steps`` time steps, one node per layer per step.

    Plain recurrent models are shown around step t (``x_{t-1}, x_t, x_{t+1}``): states passed
    to the next step across the window's edges come from or go to dashed nodes for the steps
    just outside it; longer links (``s[t-2]``, ``x[t-1]``) are drawn inside the window only. Models that read
    whole sequences (last, mean, reverse, repeat, 'from', strided convolutions, vector inputs)
    or ``from_start=True`` are shown from step 1 with dashed initial states. Each state a layer
    passes to a later step is its own arrow (an LSTM passes h and c); a delay ``[t-k]`` is an
    arrow k steps long.
    """
    if not 1 <= steps <= MAX_UNROLL:
        raise ValueError(f"steps must be between 1 and {MAX_UNROLL}")
    return _Unroller(net, steps, from_start).build()


# --- one cell ------------------------------------------------------------------------------
def cell_graph(cell: ast.CellDef) -> Graph:
    """The dataflow of one cell's equations: each statement a node, reading ports,
    parameters, delayed states (``h[t-1]``) and earlier statements."""
    info = analyze_cell(cell)
    g = Graph(f"cell_{cell.name}")
    fns = [f"fn {s.name} = {s.default}" for s in cell.body if isinstance(s, ast.FnDecl)]
    ports = ", ".join(f"{p.name}[{dim_text(p.dim)}]" for p in cell.inputs)
    outs = ", ".join(f"{p.name}[{dim_text(p.dim)}]" for p in cell.outputs)
    g.label = (((f"cell {cell.name}({ports}) -> {outs}", "b"),),
               ((f"one time step; dashed: values from earlier steps   ({cell.span.source.name})"
                 + ("   " + "; ".join(fns) if fns else ""), "small"),))
    g.attrs.update(rankdir="TB", labelloc="t", fontname="Helvetica", nodesep="0.3",
                   ranksep="0.4", charset="UTF-8")
    g.node_attrs.update(fontname="Helvetica", fontsize="11", margin="0.08,0.04")
    g.edge_attrs.update(fontname="Helvetica", fontsize="10", arrowsize="0.7")
    defined: dict[str, tuple[str, int]] = {}  # name -> (node id, number of targets)
    port_names = {p.name for p in cell.inputs}
    for p in cell.inputs:
        g.add_node(f"port_{p.name}", ((((p.name, "b"), (f" [{dim_text(p.dim)}]", ""))),),
                   shape="ellipse", style="filled", fillcolor=FILL["input"])
        defined[p.name] = (f"port_{p.name}", 1)
    params: dict[str, str] = {}
    for s in cell.body:
        if isinstance(s, ast.ParamDecl):
            nid = f"param_{s.name}"
            dims = ", ".join(dim_text(d) for d in s.dims)
            init = s.init.name if s.init is not None else "default"
            g.add_node(nid, (((s.name, "b"), (f" [{dims}]", "")), ((init, "small"),)),
                       shape="box", style="filled", fillcolor="#f7f7f7", color="#aaaaaa",
                       tooltip=f"parameter {s.name}")
            params[s.name] = nid
    delayed: dict[tuple[str, int], str] = {}
    state_set = set(info.states) | {p.name for p in cell.outputs}
    k = 0
    for s in cell.body:
        if not isinstance(s, ast.Assign):
            continue
        k += 1
        nid = f"eq{k}"
        targets = [n for n, _ in s.targets]
        text = span_text(s.value.span)
        wrapped = _wrap(text)
        head = ((", ".join(targets), "b"), (" = ", ""), (wrapped[0], ""))
        lines: tuple[Line, ...] = (head,) + tuple(((w, ""),) for w in wrapped[1:])
        kinds = [("state" if n in info.states else "output") for n in targets if n in state_set]
        attrs = {"shape": "box", "style": "filled", "fillcolor": "#ffffff"}
        if kinds:
            lines += ((" / ".join(sorted(set(kinds))), "small"),),
            attrs.update(fillcolor=FILL["state"], penwidth="1.6", style="rounded,filled")
        g.add_node(nid, lines, **attrs)
        reads: list[tuple[str, str]] = []  # (source node, edge label)
        for ref in _refs(s.value):
            name, d = ref
            if d:
                if ref not in delayed:
                    did = delayed[ref] = f"delay_{name}_{d}"
                    g.add_node(did, (((name, "b"), (f"[t-{d}]", "")),),
                               shape="box" if name not in port_names else "ellipse",
                               style="dashed,rounded", color=RECUR)
                reads.append((delayed[ref], ""))
            elif name in defined:
                src, many = defined[name]
                reads.append((src, name if many > 1 else ""))
            elif name in params:
                reads.append((params[name], ""))
        merged: dict[str, list[str]] = {}
        for src, lab in reads:
            labs = merged.setdefault(src, [])
            if lab and lab not in labs:
                labs.append(lab)
        for src, labs in merged.items():
            eattrs = {"color": "#999999"} if src.startswith("param_") else {}
            if src.startswith("delay_"):
                eattrs.update(color=RECUR)
            g.add_edge(src, nid, plain(", ".join(labs)) if labs else (), **eattrs)
        for n in targets:
            defined[n] = (nid, len(targets))
    return g


def _refs(e: ast.Expr) -> list[tuple[str, int]]:
    """Names an expression reads, with their delay (0 for the current step), in order."""
    match e:
        case ast.Index(base=ast.Name(id=n), index=idx):
            return [(n, _delay_of(idx))]
        case ast.Name(id=n):
            return [(n, 0)]
    return [r for c in ast.expr_children(e) for r in _refs(c)]


def _delay_of(e: ast.Expr) -> int:
    if isinstance(e, ast.BinOp) and e.op == "-" and isinstance(e.right, ast.Num):
        return int(e.right.value)
    return 0
