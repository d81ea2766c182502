r"""A small graph model and its Graphviz text, with every piece of user text escaped.

Labels are lists of lines of styled runs and are written as Graphviz HTML-like labels, so
subscripts (``x_{t-1}``) and bold names work; every run is entity-escaped. Other attribute
values (tooltips, colors) are written as quoted strings with quotes escaped, so no text from a
spec can end a string, start a tag or inject an attribute. Graphviz reads backslash sequences
(``\N``, ``\G``, ``\l``) in labels and tooltips as escapes, and how many times differs
between attributes and versions, so a backslash in shown text is drawn as U+29F5 (a reverse
solidus operator, which looks the same) and never reaches Graphviz.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A run of text: (text, style) with style "" (plain), "b" (bold), "sub" (subscript),
# "i" (italic), "small" (small gray).
Run = tuple[str, str]
Line = tuple[Run, ...]
Label = tuple[Line, ...]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
BACKSLASH = "\u29f5"


def _visible(text: str) -> str:
    """Text to show: no control characters, no backslashes."""
    return _CONTROL.sub("?", text).replace("\\", BACKSLASH)


def plain(*lines: str) -> Label:
    """A label of plain lines."""
    return tuple(((ln, ""),) for ln in lines)


def label_text(label: Label) -> str:
    """The label as plain text (subscripts written as ``_{...}``), for tests and messages."""
    out = []
    for line in label:
        parts = []
        for text, style in line:
            parts.append(f"_{{{text}}}" if style == "sub" else text)
        out.append("".join(parts))
    return "\n".join(out)


def html_escape(text: str) -> str:
    """Text for an HTML-like label: entities for & < > " ' and no control characters."""
    text = _visible(text)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;")
            .replace("\n", " "))


def quote(text: str) -> str:
    """A double-quoted Graphviz string that shows ``text`` literally.

    Quotes are escaped, line breaks become spaces, backslashes become U+29F5.
    """
    text = _visible(text.replace("\r", " ").replace("\n", " "))
    return '"' + text.replace('"', '\\"') + '"'


_STYLE = {
    "": ("", ""),
    "b": ("<B>", "</B>"),
    "sub": ("<SUB>", "</SUB>"),
    "i": ("<I>", "</I>"),
    "small": ('<FONT POINT-SIZE="9" COLOR="#555555">', "</FONT>"),
}


def html_label(label: Label) -> str:
    """``<...>``: the label as a Graphviz HTML-like string."""
    lines = []
    for line in label:
        parts = []
        for text, style in line:
            if not text:
                continue
            open_, close = _STYLE.get(style, ("", ""))
            parts.append(f"{open_}{html_escape(text)}{close}")
        lines.append("".join(parts) or " ")
    return "<" + '<BR ALIGN="CENTER"/>'.join(lines) + ">"


@dataclass
class Node:
    id: str
    label: Label
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Edge:
    src: str
    dst: str
    label: Label = ()
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Cluster:
    id: str
    label: Label
    nodes: list[str] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Graph:
    """Nodes, edges, clusters (boxes around nodes), rows (nodes kept on one rank, left to
    right in list order) and hidden edges (layout only: never drawn, not counted as edges)."""

    name: str
    label: Label = ()
    attrs: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    hidden: list[tuple[str, str, int]] = field(default_factory=list)  # (a, b, minlen)
    node_attrs: dict[str, str] = field(default_factory=dict)
    edge_attrs: dict[str, str] = field(default_factory=dict)

    def node(self, id_: str) -> Node:
        for n in self.nodes:
            if n.id == id_:
                return n
        raise KeyError(id_)

    def add_node(self, id_: str, label: Label, **attrs: str) -> Node:
        n = Node(id_, label, dict(attrs))
        self.nodes.append(n)
        return n

    def add_edge(self, src: str, dst: str, label: Label = (), **attrs: str) -> Edge:
        e = Edge(src, dst, label, dict(attrs))
        self.edges.append(e)
        return e


_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _id(text: str) -> str:
    return text if _ID.fullmatch(text) else quote(text)


def _attr_list(attrs: dict[str, str], label: Label | None = None) -> str:
    items = []
    if label:
        items.append(f"label={html_label(label)}")
    for k, v in attrs.items():
        if not _ID.fullmatch(k):
            raise ValueError(f"bad attribute name {k!r}")
        items.append(f"{k}={quote(v)}")
    return "[" + ", ".join(items) + "]" if items else ""


def to_dot(g: Graph) -> str:
    """Graphviz text for ``g``; deterministic (nodes and edges in insertion order)."""
    out = [f"digraph {_id(g.name)} {{"]
    attrs = dict(g.attrs)
    if g.label:
        out.append(f"  label={html_label(g.label)};")
    for k, v in attrs.items():
        out.append(f"  {k}={quote(v)};")
    if g.node_attrs:
        out.append(f"  node {_attr_list(g.node_attrs)};")
    if g.edge_attrs:
        out.append(f"  edge {_attr_list(g.edge_attrs)};")
    in_cluster = {n for c in g.clusters for n in c.nodes}
    by_id = {n.id: n for n in g.nodes}

    def node_line(n: Node, indent: str) -> str:
        return f"{indent}{_id(n.id)} {_attr_list(n.attrs, n.label)};"

    for c in g.clusters:
        out.append(f"  subgraph {_id('cluster_' + c.id)} {{")
        if c.label:
            out.append(f"    label={html_label(c.label)};")
        for k, v in c.attrs.items():
            out.append(f"    {k}={quote(v)};")
        for nid in c.nodes:
            out.append(node_line(by_id[nid], "    "))
        out.append("  }")
    for n in g.nodes:
        if n.id not in in_cluster:
            out.append(node_line(n, "  "))
    for row in g.rows:
        if row:
            out.append("  { rank=same; " + " ".join(_id(n) + ";" for n in row) + " }")
    linked = {(e.src, e.dst) for e in g.edges} | {(e.dst, e.src) for e in g.edges}
    for row in g.rows:  # keep each row in order (an edge already between two nodes does)
        for a, b in zip(row, row[1:], strict=False):
            if (a, b) not in linked:
                out.append(f"  {_id(a)} -> {_id(b)} [style=invis];")
    for a, b, minlen in g.hidden:
        out.append(f"  {_id(a)} -> {_id(b)} [style=invis, minlen={int(minlen)}];")
    for e in g.edges:
        out.append(f"  {_id(e.src)} -> {_id(e.dst)} {_attr_list(e.attrs, e.label)};")
    out.append("}")
    return "\n".join(out) + "\n"

