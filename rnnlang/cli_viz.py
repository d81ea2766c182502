"""`rnnc graph`, `rnnc gradflow` and the text of `rnnc compile --report`.

`add_commands(subparsers, common)` registers the two commands on rnnc's subparsers (``common``
adds the shared -D/--model/... options) and returns their handlers by name; each handler is
``(args, out) -> exit code`` like the other commands of `rnnlang.cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rnnlang.api import Model

Handler = Callable[[argparse.Namespace, TextIO], int]

GRAPH_HELP = """views:
  (default) --folded   each layer once, its states looping back to themselves
  --unfold K           the network over K time steps (x_{t-1}, x_t, x_{t+1}, ...)
  --cell NAME          the dataflow of one cell's equations
output: -o FILE.dot | .gv | .svg | .png | .pdf (svg/png/pdf need Graphviz's 'dot'; without it
the graph is written as .dot with a message); no -o prints the Graphviz text."""

GRADFLOW_HELP = """L is a fixed random projection of every output at its last step; the table gives
||dL/ds_(T-k)|| for every recurrent state s of every layer, read from the derived BPTT.
output: -o FILE.png | .svg | .pdf (needs matplotlib; without it a .csv is written instead),
-o FILE.csv (every step) or -o FILE.txt (the table)."""


def _usage(msg: str) -> int:
    sys.stderr.write(f"rnnc: error: {msg}\n")
    return 2


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None],
                 ) -> dict[str, Handler]:
    """Register ``graph`` and ``gradflow``; returns {name: handler}."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("graph", help="draw the network: folded, unrolled, or one cell",
                              description="Draw a model as a graph.", epilog=GRAPH_HELP,
                              formatter_class=fmt)
    p.add_argument("file", type=Path)
    view = p.add_mutually_exclusive_group()
    view.add_argument("--folded", action="store_true", help="the compact view (default)")
    view.add_argument("--unfold", type=int, metavar="K", help="unroll over K time steps")
    view.add_argument("--cell", metavar="NAME", help="one cell's equations as a dataflow graph")
    view.add_argument("--text", action="store_true",
                      help="the model's IR as text (the same printer as --emit ir)")
    p.add_argument("--from-start", action="store_true",
                   help="with --unfold: show steps 1..K from the initial state, not around t")
    p.add_argument("-o", "--output", type=Path, help="picture file (.dot .gv .svg .png .pdf)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds Graphviz may take (default 120)")
    common(p)
    p.set_defaults(handler=cmd_graph)
    p = subparsers.add_parser("gradflow", help="how far back gradients reach (vanishing "
                              "gradients), per state", description="Measure dL/ds_(T-k).",
                              epilog=GRADFLOW_HELP, formatter_class=fmt)
    p.add_argument("file", type=Path)
    p.add_argument("--params", type=Path, metavar="CKPT", help="parameters saved by Model.save")
    p.add_argument("--steps", type=int, default=50, help="sequence length T (default 50)")
    p.add_argument("--batch", type=int, default=16, help="random sequences (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, help="picture or table (.png .svg .pdf .csv .txt)")
    common(p)
    p.set_defaults(handler=cmd_gradflow)
    return {"graph": cmd_graph, "gradflow": cmd_gradflow}


def cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    from rnnlang.viz import model_graph, named_cell_graph, to_dot
    from rnnlang.viz.render import FORMATS, write_graph

    if args.output is not None and args.output.suffix.lower() not in FORMATS:
        return _usage(f"cannot write '{args.output}': the name must end in "
                      + ", ".join(FORMATS))
    if args.unfold is not None and not 1 <= args.unfold <= 64:
        return _usage("--unfold takes a number of steps from 1 to 64")
    if args.from_start and args.unfold is None:
        return _usage("--from-start goes with --unfold K")
    if args.text:
        import rnnlang
        from rnnlang.ir.printer import print_program
        out.write(print_program(rnnlang.compile(args.file, target="reference",
                                                model=args.model).program))
        return 0
    if args.cell is not None:
        g = named_cell_graph(args.file, args.cell)
    else:
        g = model_graph(args.file, model=args.model, unfold=args.unfold,
                        from_start=args.from_start)
    text = to_dot(g)
    if args.output is None:
        out.write(text)
        return 0
    written = write_graph(text, args.output, timeout=args.timeout)
    if written.note:
        sys.stderr.write(f"rnnc: warning: {written.note}\n")
    else:
        out.write(f"wrote {written.path}\n")
    return 0


def cmd_gradflow(args: argparse.Namespace, out: TextIO) -> int:
    import rnnlang
    from rnnlang.cli import _opts
    from rnnlang.viz.gradflow import (
        MAX_STEPS,
        csv_text,
        gradient_flow,
        have_matplotlib,
        plot,
        table_text,
    )
    from rnnlang.viz.render import write_file

    suffix = args.output.suffix.lower() if args.output is not None else ""
    if args.output is not None and suffix not in (".png", ".svg", ".pdf", ".csv", ".txt"):
        return _usage(f"cannot write '{args.output}': the name must end in .png, .svg, .pdf, "
                      ".csv or .txt")
    if not 1 <= args.steps <= MAX_STEPS or not 1 <= args.batch <= 4096:
        return _usage(f"--steps must be between 1 and {MAX_STEPS}, --batch between 1 and 4096")
    m = rnnlang.compile(args.file, seed=args.seed, **_opts(args))  # type: ignore[arg-type]
    if args.params is not None:
        m.load(args.params)
    gf = gradient_flow(m, args.steps, args.batch, args.seed)
    if not gf.flows:
        sys.stderr.write(f"rnnc: warning: model {m.name} has no recurrent state\n")
    table = table_text(gf)
    out.write(table)
    if args.output is None:
        return 0
    path: Path = args.output
    if suffix == ".csv":
        write_file(path, csv_text(gf).encode())
    elif suffix == ".txt":
        write_file(path, table.encode())
    elif not have_matplotlib():
        path = path.with_suffix(".csv")
        write_file(path, csv_text(gf).encode())
        sys.stderr.write(f"rnnc: warning: matplotlib is not installed, so {args.output} was "
                         f"not drawn; wrote the numbers to {path} instead (pip install "
                         "matplotlib)\n")
        return 0
    else:
        write_file(path, plot(gf, suffix[1:]))
    out.write(f"wrote {path}\n")
    return 0


def report_text(model: Model) -> str:
    """The text of ``rnnc compile --report`` for a compiled model."""
    from rnnlang.viz.report import report_text as _report

    return _report(model)


__all__ = ["add_commands", "cmd_gradflow", "cmd_graph", "report_text"]
