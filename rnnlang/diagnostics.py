"""Source spans, diagnostics and the two error families.

User mistakes become `RnnUserError` carrying one or more `Diagnostic`s rendered as
``FILE:LINE:COL: error[CODE]: message`` plus the source line and a caret, so that no user
mistake ever surfaces as a Python traceback. Compiler bugs are `InternalCompilerError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Source:
    """A named piece of text; spans point into it."""

    name: str
    text: str = field(repr=False)

    @property
    def lines(self) -> list[str]:
        """Lines as the parser counts them: only newline characters end a line."""
        lines = self.text.split("\n")
        if lines and not lines[-1]:
            lines.pop()
        return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]

    def line(self, lineno: int) -> str:
        lines = self.lines
        return lines[lineno - 1] if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True, slots=True)
class Span:
    """A 1-based line/column range in a `Source` (end is exclusive on the same line)."""

    source: Source = field(repr=False, compare=False)
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None
    notes: tuple[str, ...] = ()
    hint: str | None = None

    def render(self) -> str:
        loc = f"{self.span}: " if self.span is not None else ""
        out = [f"{loc}error[{self.code}]: {self.message}"]
        if self.span is not None:
            out.extend(_caret_lines(self.span))
        out.extend(f"   note: {n}" for n in self.notes)
        if self.hint:
            out.append(f"   hint: {self.hint}")
        return "\n".join(out)


MAX_SHOWN = 100  # longest source excerpt shown under a diagnostic


def _caret_lines(span: Span) -> list[str]:
    text = span.source.line(span.line).expandtabs(1)
    if not text and span.line > len(span.source.lines):
        return []
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    num = str(span.line)
    width = span.end_col - span.col if span.end_line == span.line else len(text) - span.col + 1
    width = max(1, min(width, max(1, len(text) - span.col + 1)))
    col = span.col
    if len(text) > MAX_SHOWN:  # a window around the span, so huge lines stay readable
        start = max(0, min(col - 1 - MAX_SHOWN // 2, len(text) - MAX_SHOWN))
        prefix = "..." if start > 0 else ""
        suffix = "..." if start + MAX_SHOWN < len(text) else ""
        text = prefix + text[start : start + MAX_SHOWN] + suffix
        col = col - start + len(prefix)
        width = max(1, min(width, MAX_SHOWN - (col - 1 - len(prefix))))
    pad = " " * len(num)
    return [f" {num} | {text}", f" {pad} | {' ' * (col - 1)}{'^' * width}"]


class RnnUserError(Exception):
    """One or more mistakes in user input; rendered without a traceback."""

    def __init__(self, diagnostics: Diagnostic | Iterable[Diagnostic]):
        diags = (diagnostics,) if isinstance(diagnostics, Diagnostic) else tuple(diagnostics)
        self.diagnostics: tuple[Diagnostic, ...] = diags
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.diagnostics)


class InternalCompilerError(Exception):
    """A broken compiler invariant: a bug in rnnlang, never the user's fault."""


def error(code: str, message: str, span: Span | None, *, hint: str | None = None,
          notes: Iterable[str] = ()) -> RnnUserError:
    return RnnUserError(Diagnostic(code, message, span, tuple(notes), hint))


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


@dataclass
class Collector:
    """Collects diagnostics so a check stage reports many at once (capped)."""

    limit: int = 20
    items: list[Diagnostic] = field(default_factory=list)

    def add(self, err: RnnUserError) -> None:
        self.items.extend(err.diagnostics)
        if len(self.items) >= self.limit:
            self.raise_if_any()

    def raise_if_any(self) -> None:
        if self.items:
            raise RnnUserError(self.items[: self.limit])
