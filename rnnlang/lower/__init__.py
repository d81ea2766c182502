"""AST -> IR: name resolution, cell instantiation, shape inference (one module per part)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from rnnlang.diagnostics import Collector, RnnUserError, Span, did_you_mean, error
from rnnlang.ir.nodes import Program
from rnnlang.lower.model import lower_model
from rnnlang.lower.train import check_trains, train_section
from rnnlang.syntax import ast
from rnnlang.syntax.parse import MAX_SOURCE_BYTES, parse

MAX_IMPORT_DEPTH = 16
__all__ = ["check_module", "check_trains", "collect_cells", "lower_program", "stdlib_cells",
           "train_section"]


@lru_cache(maxsize=1)
def stdlib_cells() -> tuple[ast.CellDef, ...]:
    """The standard library, written in the language itself and imported by default."""
    cells: list[ast.CellDef] = []
    root = resources.files("rnnlang").joinpath("stdlib")
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".rnn"):
            cells.extend(parse(entry.read_text(), f"<stdlib>/{entry.name}").cells)
    return tuple(cells)


def collect_cells(module: ast.Module, base: Path | None, _depth: int = 0,
                  _chain: tuple[tuple[str, str], ...] = ()) -> dict[str, ast.CellDef]:
    """Standard library, then imports, then the module's own cells (later ones shadow).

    ``_chain`` holds (resolved path, name as written) of the files being imported, outermost
    first, to report import cycles."""
    cells = {c.name: c for c in stdlib_cells()} if _depth == 0 else {}
    if _depth == 0 and base is not None:
        name = module.source.name
        _chain = ((str(Path(name).resolve()), Path(name).name),)
    for imp in module.imports:
        path = (base or Path.cwd()) / imp.path
        try:
            key = str(path.resolve())
        except (OSError, ValueError, RuntimeError) as exc:
            raise error("E111", f"invalid import path '{imp.path}': {exc}", imp.span) from None
        keys = [k for k, _ in _chain]
        if key in keys:
            loop = [n for _, n in _chain[keys.index(key):]] + [imp.path]
            raise error("E110", "import cycle: " + " -> ".join(loop),
                        imp.span, hint="move the shared cells into a file that both can import")
        if _depth >= MAX_IMPORT_DEPTH:
            raise error("E110", f"imports are nested deeper than {MAX_IMPORT_DEPTH} files",
                        imp.span)
        try:
            if path.exists() and not path.is_file():
                raise error("E111", f"cannot import '{imp.path}': it is not a regular file",
                            imp.span)
            if path.stat().st_size > MAX_SOURCE_BYTES:
                raise error("E001", f"imported file '{imp.path}' is larger than the limit of "
                            f"{MAX_SOURCE_BYTES} bytes", imp.span)
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            why = (exc.strerror or str(exc)).lower()
            raise error("E111", f"cannot read imported file '{imp.path}': {why}", imp.span,
                        hint=f"import paths are relative to the importing file; looked for {path}"
                        ) from None
        except UnicodeDecodeError:
            raise error("E111", f"imported file '{imp.path}' is not UTF-8 text", imp.span
                        ) from None
        sub = parse(text, str(path))
        cells.update(collect_cells(sub, path.parent, _depth + 1, _chain + ((key, imp.path),)))
    own: dict[str, ast.CellDef] = {}
    for c in module.cells:
        if c.name in own:
            raise error("E112", f"cell '{c.name}' is defined twice", _header(c.span),
                        hint=f"the first definition is on line {own[c.name].span.line}")
        own[c.name] = c
        cells[c.name] = c
    return cells


def _header(span: Span) -> Span:
    """The first line of a multi-line definition (where its name is)."""
    if span.end_line == span.line:
        return span
    return Span(span.source, span.line, span.col, span.line,
                len(span.source.line(span.line)) + 1)


def _check_model_names(module: ast.Module) -> None:
    seen: dict[str, ast.ModelDef] = {}
    for m in module.models:
        if m.name in seen:
            raise error("E115", f"model '{m.name}' is defined twice", _header(m.span),
                        hint=f"the first definition is on line {seen[m.name].span.line}")
        seen[m.name] = m


def check_module(module: ast.Module, base: Path | None) -> list[Program]:
    """Lower every model, collecting errors from all of them."""
    cells = collect_cells(module, base)
    _check_model_names(module)
    out: list[Program] = []
    coll = Collector()
    for m in module.models:
        try:
            out.append(lower_model(m, cells))
        except RnnUserError as exc:
            coll.add(exc)
    try:
        check_trains(module, base)
    except RnnUserError as exc:
        coll.add(exc)
    coll.raise_if_any()
    return out


def lower_program(module: ast.Module, base: Path | None, model: str | None = None) -> Program:
    cells = collect_cells(module, base)
    _check_model_names(module)
    if not module.models:
        raise error("E113", "this file defines no model", Span(module.source, 1, 1, 1, 2),
                    hint="add 'model name(...) { input x: seq[F] ... output y = ... }'")
    if model is None:
        return lower_model(module.models[0], cells)
    for m in module.models:
        if m.name == model:
            return lower_model(m, cells)
    names = [m.name for m in module.models]
    raise error("E114", f"no model named '{model}' in this file", _header(module.models[0].span),
                hint=did_you_mean(model, names) or "its models are " + ", ".join(names))
