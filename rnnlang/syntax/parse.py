"""Parse `.rnn` text into an AST `Module`.

Lark (LALR) builds the parse tree; `_ToAst` turns it into dataclasses with spans. Lark's
exceptions become located `RnnUserError`s. Size and nesting limits are checked on the raw text
before parsing so that hostile input cannot exhaust memory or recursion.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from rnnlang.diagnostics import RnnUserError, Source, Span, error
from rnnlang.syntax import ast

MAX_SOURCE_BYTES = 1_000_000
MAX_NESTING = 64
MAX_SIZE = 1 << 24  # largest size a spec may write (the runtime has the same limit)
MAX_TREE_DEPTH = 200  # parse-tree depth: long chains like a + a + ... + a recurse in lowering

# control characters other than tab, newline, carriage return and form feed; lone surrogates
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff]")

KEYWORDS = frozenset({"import", "cell", "state", "param", "fn", "model", "input", "output",
                      "over", "from"})

_TOKEN_NAMES = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'", "NAME": "a name",
    "INT": "an integer", "NUMBER": "a number", "STRING": "a string", "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> Lark:
    text = resources.files("rnnlang").joinpath("grammar/rnn.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, name: str = "<string>") -> ast.Module:
    """Parse source text; raises `RnnUserError` with a located diagnostic on bad input."""
    src = Source(name, text)
    _check_limits(src)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(src, exc) from None
    _check_depth(src, tree)
    try:
        return _ToAst(src).transform(tree)
    except VisitError as exc:  # a located error raised while building the AST
        if isinstance(exc.orig_exc, RnnUserError):
            raise exc.orig_exc from None
        raise


def _short(text: str) -> str:
    return text if len(text) <= 20 else f"{text[:10]}... ({len(text)} characters)"


def _check_depth(src: Source, tree: Tree) -> None:
    """Reject trees deep enough to exhaust Python's recursion (checked without recursing)."""
    stack: list[tuple[Tree, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise error("E002", f"expression is nested too deeply (over {MAX_TREE_DEPTH} levels)",
                        _span_of(src, node),
                        hint="split the expression into named intermediate values")
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


def _check_limits(src: Source) -> None:
    if len(src.text.encode("utf-8", "replace")) > MAX_SOURCE_BYTES:
        raise error("E001", f"file is larger than the limit of {MAX_SOURCE_BYTES} bytes",
                    Span(src, 1, 1, 1, 2))
    bad = _BAD_CHARS.search(src.text)
    if bad is not None:  # even in comments: they are copied into generated code
        lineno = src.text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (src.text.rfind("\n", 0, bad.start()) + 1) + 1
        raise error("E100", f"unexpected character U+{ord(bad.group()):04X}",
                    Span(src, lineno, col, lineno, col + 1),
                    hint="control characters and invalid Unicode are not allowed anywhere in a "
                    "spec, even in comments")
    depth = 0
    for lineno, line in enumerate(src.lines, 1):
        for col, ch in enumerate(line.split("#", 1)[0], 1):
            if ch in "([{":
                depth += 1
                if depth > MAX_NESTING:
                    raise error("E002", f"brackets nested deeper than {MAX_NESTING} levels",
                                Span(src, lineno, col, lineno, col + 1),
                                hint="split the expression into named intermediate values")
            elif ch in ")]}":
                depth = max(0, depth - 1)


def _syntax_error(src: Source, exc: UnexpectedInput) -> Exception:
    line = getattr(exc, "line", None) or 1
    col = getattr(exc, "column", None) or 1
    at_end = isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END")
    if isinstance(exc, UnexpectedCharacters):
        ch = src.line(line)[col - 1 : col] or "?"
        shown = f"'{ch}'" if ch.isprintable() else f"U+{ord(ch):04X}"
        hint = "strings are only used in import lines: import \"cells.rnn\"" if ch in "\"'" else None
        return error("E100", f"unexpected character {shown}", Span(src, line, col, line, col + 1),
                     hint=hint)
    expected = {_TOKEN_NAMES.get(t, f"'{t.lower()}'") for t in _expected(exc)}
    if at_end:
        line, col = _end_position(src)
        return error("E101", "unexpected end of file", Span(src, line, col, line, col + 1),
                     hint=_unclosed_hint(src) or _expected_hint(expected))
    found, width = "end of file", 1
    hint = _expected_hint(expected)
    if isinstance(exc, UnexpectedToken):
        found = f"'{exc.token}'"
        width = max(1, len(str(exc.token)))
        before = re.search(r"([A-Za-z_][A-Za-z_0-9]*)\s*$", src.line(line)[: col - 1])
        if str(exc.token) in KEYWORDS and "a name" in expected:
            hint = f"'{exc.token}' is a keyword and cannot be used as a name"
        elif before is not None and before.group(1) in KEYWORDS and "a name" in expected:
            hint = f"'{before.group(1)}' is a keyword and cannot be used as a name here"
    return error("E101", f"unexpected {found}", Span(src, line, col, line, col + width), hint=hint)


def _expected_hint(expected: set[str]) -> str | None:
    order = sorted(expected, key=lambda t: (not t.startswith("'"), t))
    return f"expected {', '.join(order)}" if 0 < len(order) <= 5 else None


def _significant(src: Source) -> list[tuple[int, int, str]]:
    """(line, col, char) of every character outside comments, strings and whitespace."""
    out = []
    for lineno, text in enumerate(src.lines, 1):
        in_str = False
        for col, ch in enumerate(text, 1):
            if ch == '"':
                in_str = not in_str
                out.append((lineno, col, ch))
            elif in_str:
                continue
            elif ch == "#":
                break
            elif not ch.isspace():
                out.append((lineno, col, ch))
    return out


def _end_position(src: Source) -> tuple[int, int]:
    """Just after the last character that is not whitespace or part of a comment."""
    chars = _significant(src)
    if not chars:
        return 1, 1
    line, col, _ = chars[-1]
    return line, col + 1


def _unclosed_hint(src: Source) -> str | None:
    closers = {"(": ")", "[": "]", "{": "}"}
    stack: list[tuple[int, int, str]] = []
    for line, col, ch in _significant(src):
        if ch in closers:
            stack.append((line, col, ch))
        elif ch in ")]}" and stack and closers[stack[-1][2]] == ch:
            stack.pop()
    if not stack:
        return None
    line, col, ch = stack[-1]
    return f"'{closers[ch]}' is missing: the '{ch}' at line {line}, column {col} is never closed"


def _expected(exc: UnexpectedInput) -> set[str]:
    if isinstance(exc, UnexpectedToken):
        return set(exc.accepts or exc.expected or ())
    if isinstance(exc, UnexpectedEOF):
        return set(exc.expected or ())
    return set()


def _span_of(src: Source, node: Tree | Token) -> Span:
    if isinstance(node, Token):
        return Span(src, node.line or 1, node.column or 1, node.end_line or 1, node.end_column or 1)
    m = node.meta
    if getattr(m, "empty", True):
        return Span(src, 1, 1, 1, 2)
    return Span(src, m.line, m.column, m.end_line, m.end_column)


@v_args(meta=True)
class _ToAst(Transformer):  # type: ignore[type-arg]
    """Parse tree -> AST. Each method receives Lark `meta` for spans."""

    def __init__(self, src: Source):
        super().__init__()
        self.src = src

    def _sp(self, meta: object) -> Span:
        m = meta
        if getattr(m, "empty", True):
            return Span(self.src, 1, 1, 1, 2)
        return Span(self.src, m.line, m.column, m.end_line, m.end_column)  # type: ignore[attr-defined]

    def _tok(self, tok: Token) -> Span:
        return _span_of(self.src, tok)

    # --- top level -----------------------------------------------------------------------
    def start(self, meta, items):
        imports = tuple(i for i in items if isinstance(i, ast.Import))
        cells = tuple(i for i in items if isinstance(i, ast.CellDef))
        models = tuple(i for i in items if isinstance(i, ast.ModelDef))
        trains = tuple(i for i in items if isinstance(i, ast.TrainDef))
        return ast.Module(self.src, imports, cells, models, trains)

    def import_stmt(self, meta, c):
        return ast.Import(str(c[0])[1:-1], self._sp(meta))

    def cell(self, meta, c):
        name, ins, outs, *body = c
        return ast.CellDef(str(name), ins, outs, tuple(body), self._sp(meta))

    def ports(self, meta, c):
        return tuple(c)

    def port(self, meta, c):
        return ast.Port(str(c[0]), c[1], self._sp(meta))

    def state_decl(self, meta, c):
        return ast.StateDecl(str(c[0]), c[1], c[2], self._sp(meta))

    def param_decl(self, meta, c):
        return ast.ParamDecl(str(c[0]), c[1], c[2], self._sp(meta))

    def fn_decl(self, meta, c):
        return ast.FnDecl(str(c[0]), str(c[1]), self._sp(meta), self._tok(c[1]))

    def assign(self, meta, c):
        return ast.Assign(c[0], c[1], self._sp(meta))

    def targets(self, meta, c):
        return tuple((str(t), self._tok(t)) for t in c)

    def init(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return ast.Init(str(c[0]), args, kwargs, self._sp(meta))

    def model(self, meta, c):
        name, dims, *body = c
        return ast.ModelDef(str(name), dims or (), tuple(body), self._sp(meta))

    def dim_params(self, meta, c):
        return tuple(c)

    def dim_param(self, meta, c):
        default = self._int(c[1]) if len(c) > 1 and c[1] is not None else None
        return ast.DimParam(str(c[0]), default, self._sp(meta))

    def input_decl(self, meta, c):
        return ast.InputDecl(str(c[0]), str(c[1]), c[2], self._sp(meta), self._tok(c[1]))

    def output_decl(self, meta, c):
        return ast.OutputDecl(str(c[0]), c[1], self._sp(meta))

    # --- train sections ------------------------------------------------------------------
    def train(self, meta, c):
        name, *body = c
        return ast.TrainDef(str(name) if name is not None else None, tuple(body),
                            self._sp(meta), self._tok(name) if name is not None else None)

    def train_set(self, meta, c):
        key, sub, value, suffix, w = c
        weight = None
        if w is not None:
            weight = float(w)
            if not math.isfinite(weight) or weight > 1e300:
                raise error("E102", f"number {_short(str(w))} is too large", self._tok(w))
        return ast.TrainSet(str(key), str(sub) if sub is not None else None, value,
                            str(suffix) if suffix is not None else None, weight,
                            self._sp(meta), self._tok(key),
                            self._tok(sub) if sub is not None else None,
                            self._tok(suffix) if suffix is not None else None)

    def string(self, meta, c):
        return ast.Str(str(c[0])[1:-1], self._sp(meta))

    # --- dimensions ----------------------------------------------------------------------
    def dims(self, meta, c):
        return tuple(c)

    def dim_name(self, meta, c):
        return ast.LinDim(((str(c[0]), 1),), 0, self._sp(meta))

    def _int(self, tok: Token) -> int:
        digits = str(tok).lstrip("0") or "0"  # short before int(): huge literals stay cheap
        if len(digits) > 9 or int(digits) > MAX_SIZE:
            raise error("E306", f"size {_short(str(tok))} is larger than the limit of {MAX_SIZE}",
                        self._tok(tok))
        return int(digits)

    def dim_int(self, meta, c):
        return ast.LinDim((), self._int(c[0]), self._sp(meta))

    def dim_add(self, meta, c):
        return _lin_combine(c[0], c[1], 1, self._sp(meta))

    def dim_sub(self, meta, c):
        return _lin_combine(c[0], c[1], -1, self._sp(meta))

    def dim_mul(self, meta, c):
        k = self._int(c[0])
        d = c[1]
        return ast.LinDim(tuple((n, k * v) for n, v in d.terms), k * d.const, self._sp(meta))

    def dim_mul_r(self, meta, c):
        return self.dim_mul(meta, [c[1], c[0]])

    # --- expressions ---------------------------------------------------------------------
    def number(self, meta, c):
        value = float(c[0])
        if not math.isfinite(value) or abs(value) > 1e300:
            raise error("E102", f"number {_short(str(c[0]))} is too large", self._sp(meta))
        return ast.Num(value, str(c[0]), self._sp(meta))

    def name(self, meta, c):
        return ast.Name(str(c[0]), self._sp(meta))

    def _bin(self, op, meta, c):
        return ast.BinOp(op, c[0], c[1], self._sp(meta))

    def add(self, meta, c):
        return self._bin("+", meta, c)

    def sub(self, meta, c):
        return self._bin("-", meta, c)

    def mul(self, meta, c):
        return self._bin("*", meta, c)

    def div(self, meta, c):
        return self._bin("/", meta, c)

    def matmul(self, meta, c):
        return self._bin("@", meta, c)

    def neg(self, meta, c):
        return ast.Neg(c[0], self._sp(meta))

    def index(self, meta, c):
        return ast.Index(c[0], c[1], self._sp(meta))

    def slice(self, meta, c):
        return ast.Slice(c[0], c[1], c[2], self._sp(meta))

    def over(self, meta, c):
        return ast.Over(c[0], c[1], c[2], self._sp(meta))

    def call(self, meta, c):
        args, kwargs = c[1] if c[1] is not None else ((), ())
        return ast.Call(str(c[0]), args, kwargs, self._sp(meta), self._tok(c[0]))

    def args(self, meta, c):
        pos = tuple(a for a in c if not isinstance(a, tuple))
        kw = tuple(a for a in c if isinstance(a, tuple))
        return pos, kw

    def kwarg(self, meta, c):
        return (str(c[0]), c[1])


def _lin_combine(a: ast.LinDim, b: ast.LinDim, sign: int, span: Span) -> ast.LinDim:
    terms = dict(a.terms)
    for n, v in b.terms:
        terms[n] = terms.get(n, 0) + sign * v
    return ast.LinDim(tuple(sorted((n, v) for n, v in terms.items() if v)),
                      a.const + sign * b.const, span)
