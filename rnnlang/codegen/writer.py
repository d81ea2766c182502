"""A tiny line builder with indentation: the only way generated source is written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class CodeWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def line(self, text: str = "") -> None:
        self.lines.append(("    " * self.depth + text) if text else "")

    def comment(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line("# " + part.replace("\r", " "))

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def source(self) -> str:
        return "\n".join(self.lines) + "\n"
