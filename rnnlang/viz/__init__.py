"""Pictures of a network: folded and unrolled diagrams, one cell's dataflow, the gradient
flow through time, and a report of what the compiler did.

Graphs are built from the spec's AST (so they use the spec's own names), written as Graphviz
text (`dot.to_dot`) and rendered by the `dot` program when it is installed (`render`).
"""

from __future__ import annotations

import os

from rnnlang.diagnostics import did_you_mean, error
from rnnlang.viz.dot import Graph, to_dot
from rnnlang.viz.net import Net, build_net
from rnnlang.viz.views import MAX_UNROLL, cell_graph, folded_graph, unrolled_graph


def load_net(source_or_path: str | os.PathLike[str], model: str | None = None) -> Net:
    """Check a spec (errors are `RnnUserError`s) and read its model's wiring."""
    from rnnlang.api import parse_program
    from rnnlang.lower import collect_cells, lower_program

    module, base = parse_program(source_or_path)
    lower_program(module, base, model)  # reports every user error before drawing
    cells = collect_cells(module, base)
    chosen = module.models[0]
    if model is not None:
        chosen = next(m for m in module.models if m.name == model)
    return build_net(chosen, cells)


def model_graph(source_or_path: str | os.PathLike[str], *, model: str | None = None,
                unfold: int | None = None, from_start: bool = False) -> Graph:
    """The folded view, or the view unrolled over ``unfold`` steps."""
    net = load_net(source_or_path, model)
    if unfold is None:
        return folded_graph(net)
    if not 1 <= unfold <= MAX_UNROLL:
        raise error("E601", f"--unfold takes a number of steps from 1 to {MAX_UNROLL}, "
                    f"not {unfold}", None)
    return unrolled_graph(net, unfold, from_start=from_start)


def named_cell_graph(source_or_path: str | os.PathLike[str], name: str) -> Graph:
    """The dataflow of cell ``name`` (the file's own cells, its imports, the standard library)."""
    from rnnlang.api import parse_program
    from rnnlang.lower import collect_cells

    module, base = parse_program(source_or_path)
    cells = collect_cells(module, base)
    if name not in cells:
        raise error("E401", f"no cell named '{name}'", None,
                    hint=did_you_mean(name, cells) or "cells: " + ", ".join(sorted(cells)))
    return cell_graph(cells[name])


__all__ = ["Graph", "Net", "build_net", "cell_graph", "folded_graph", "load_net",
           "model_graph", "named_cell_graph", "to_dot", "unrolled_graph"]
