"""AST -> IR: name resolution, cell instantiation, shape inference (one module per part)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from rnnlang.diagnostics import Collector, RnnUserError, did_you_mean, error
from rnnlang.ir.nodes import Program
from rnnlang.lower.model import lower_model
from rnnlang.syntax import ast
from rnnlang.syntax.parse import parse

MAX_IMPORT_DEPTH = 16


@lru_cache(maxsize=1)
def stdlib_cells() -> tuple[ast.CellDef, ...]:
    """The standard library, written in the language itself and imported by default."""
    cells: list[ast.CellDef] = []
    root = resources.files("rnnlang").joinpath("stdlib")
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".rnn"):
            cells.extend(parse(entry.read_text(), f"<stdlib>/{entry.name}").cells)
    return tuple(cells)


def collect_cells(module: ast.Module, base: Path | None,
                  _depth: int = 0, _seen: frozenset[str] = frozenset()) -> dict[str, ast.CellDef]:
    """Standard library, then imports, then the module's own cells (later ones shadow)."""
    cells = {c.name: c for c in stdlib_cells()} if _depth == 0 else {}
    for imp in module.imports:
        path = (base or Path.cwd()) / imp.path
        key = str(path.resolve())
        if _depth >= MAX_IMPORT_DEPTH or key in _seen:
            raise error("E110", f"import cycle or imports nested deeper than {MAX_IMPORT_DEPTH}",
                        imp.span)
        try:
            text = path.read_text()
        except OSError as exc:
            raise error("E111", f"cannot read imported file '{imp.path}': {exc.strerror}",
                        imp.span) from None
        sub = parse(text, str(path))
        cells.update(collect_cells(sub, path.parent, _depth + 1, _seen | {key}))
    own: set[str] = set()
    for c in module.cells:
        if c.name in own:
            raise error("E112", f"cell '{c.name}' is defined twice", c.span)
        own.add(c.name)
        cells[c.name] = c
    return cells


def check_module(module: ast.Module, base: Path | None) -> list[Program]:
    """Lower every model, collecting errors from all of them."""
    cells = collect_cells(module, base)
    out: list[Program] = []
    coll = Collector()
    for m in module.models:
        try:
            out.append(lower_model(m, cells))
        except RnnUserError as exc:
            coll.add(exc)
    coll.raise_if_any()
    return out


def lower_program(module: ast.Module, base: Path | None, model: str | None = None) -> Program:
    cells = collect_cells(module, base)
    if not module.models:
        raise error("E113", "this file defines no model", None,
                    hint="add 'model name(...) { input x: seq[F] ... output y = ... }'")
    if model is None:
        return lower_model(module.models[0], cells)
    for m in module.models:
        if m.name == model:
            return lower_model(m, cells)
    raise error("E114", f"no model named '{model}'", None,
                hint=did_you_mean(model, [m.name for m in module.models]))
