"""Fuzzing the front end: broken sources give located user errors, never crashes or hangs.

Valid sources (examples/tagger.rnn, and the standard library plus a model that uses every cell
and layer kind) are mutated character- and token-wise and truncated. Parsing and lowering
(`check_module`, no code generation) must either succeed or raise `RnnUserError` whose every
diagnostic points inside the file; any other exception is a bug. Each example has a time limit.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlang.diagnostics import Diagnostic, RnnUserError
from rnnlang.lower import check_module
from rnnlang.syntax.parse import parse

ROOT = Path(__file__).resolve().parents[2]
TAGGER = (ROOT / "examples" / "tagger.rnn").read_text()
CELLS = (ROOT / "rnnlang" / "stdlib" / "cells.rnn").read_text()
USES = """
model all(H = 8, F = 4, O = 3) {
  input x: seq[F]
  input v: vec[F]
  param Wy[H, O] = glorot
  a = elman(H, phi=relu) over x
  b = jordan(O, H) over a
  c = stack(lstm(H), 2) over x
  d = bidir(gru(H), merge=sum) over c
  e = peephole_lstm(H) over d
  f = indrnn(H) over e
  g = mgu(H) over f from f
  k = conv1d(x, channels=8, kernel=3, stride=2, padding=1)
  z = dense(g, 5, act=tanh)
  output y = g @ Wy + last(b) * 2
  output w = mean(reverse(z)) + dense(v, 5)
  output q = gru(H) over repeat(last(k), x) from f
  output s = concat(g[0:2], e * 0.5)[1:H]
}
"""
SOURCES = {"tagger.rnn": TAGGER, "cells_and_model.rnn": CELLS + USES}

TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+\.\d*(?:[eE][-+]?\d+)?|\d+|\"[^\"\n]*\"|#[^\n]*|\S")
VOCAB = ("(", ")", "[", "]", "{", "}", ",", "=", "@", "+", "-", "*", "/", ":", "->", "over", "from",
         "t", "t-1", "[t-1]", "x", "h", "H", "I", "lstm", "gru", "stack", "bidir", "model", "cell",
         "param", "state", "fn", "input", "output", "import", '"nowhere.rnn"', "0", "1", "2.5",
         "1e9", "99999999999", "seq", "vec", "split", "concat", "last", "repeat", "conv1d",
         "dense", "#", "\n", "\t", "$", "\"", "'", "\\", "é", "\u2028", "\x0c", "\r")
TIME_LIMIT_S = 5.0
SCALE = int(os.environ.get("RNNLANG_FUZZ_SCALE", "1"))  # e.g. 100 for a long fuzzing run


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail an example that runs too long (SIGALRM: Unix, main thread)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not (
            threading.main_thread()):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"front end ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def assert_located(d: Diagnostic, text: str, name: str) -> None:
    assert d.span is not None, f"diagnostic without a location: {d.render()}"
    src = d.span.source
    if src.name == name:
        assert src.text == text
    else:
        assert src.name.startswith("<stdlib>/"), src.name
    lines = src.lines
    sp = d.span
    assert 1 <= sp.line <= max(1, len(lines)), (sp, len(lines))
    assert 1 <= sp.col <= len(src.line(sp.line)) + 1, (sp, src.line(sp.line))
    assert (sp.end_line, sp.end_col) >= (sp.line, sp.col), sp
    assert d.message and not d.message[0].isupper(), d.message


def check_front_end(text: str, name: str) -> None:
    """Parse and lower; only `RnnUserError` with located diagnostics may come out."""
    with time_limit(TIME_LIMIT_S):
        try:
            check_module(parse(text, name), None)
        except RnnUserError as exc:
            assert exc.diagnostics
            for d in exc.diagnostics:
                assert_located(d, text, name)
            rendered = exc.render()
            assert "Traceback" not in rendered


def test_the_fuzzed_sources_are_valid() -> None:
    for name, text in SOURCES.items():
        progs = check_module(parse(text, name), None)
        assert progs


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[name]
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("delete", "insert", "replace", "drop_token", "swap_token",
                                   "dup_token", "truncate")))
        tokens = [(m.start(), m.end()) for m in TOKEN.finditer(text)]
        if op == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 12)):]
        elif op == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(VOCAB)) + text[i:]
        elif op == "replace" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + draw(st.sampled_from(VOCAB)) + text[i + 1:]
        elif op in ("drop_token", "swap_token", "dup_token") and tokens:
            a, b = tokens[draw(st.integers(0, len(tokens) - 1))]
            if op == "drop_token":
                new = ""
            elif op == "dup_token":
                new = text[a:b] + " " + text[a:b]
            else:
                c, d = tokens[draw(st.integers(0, len(tokens) - 1))]
                new = text[c:d]
            text = text[:a] + new + text[b:]
        elif op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
    return name, text


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_sources(case: tuple[str, str]) -> None:
    name, text = case
    check_front_end(text, name)


@settings(max_examples=60 * SCALE, deadline=None)
@given(st.sampled_from(sorted(SOURCES)), st.data())
def test_truncated_sources(name: str, data: st.DataObject) -> None:
    text = SOURCES[name]
    cut = data.draw(st.integers(0, len(text)))
    check_front_end(text[:cut], name)


SOUP = [*"()[]{},=@+-*/:.#\"\n\t xhtHW0123e_", "over", "from", "model", "cell", "input",
        "output", "param", "state", "fn", "seq", "lstm", "import", " = ", "->"]


@settings(max_examples=100 * SCALE, deadline=None)
@given(st.lists(st.sampled_from(SOUP), max_size=80).map("".join))
def test_random_token_soup(text: str) -> None:
    check_front_end(text, "soup.rnn")


def test_every_truncation_of_the_tagger() -> None:
    """Exhaustive: the tagger cut after every character."""
    for cut in range(len(TAGGER) + 1):
        check_front_end(TAGGER[:cut], "tagger.rnn")


def test_every_single_token_deleted_from_the_tagger() -> None:
    for m in TOKEN.finditer(TAGGER):
        check_front_end(TAGGER[: m.start()] + TAGGER[m.end():], "tagger.rnn")


EDGE_CASES = [
    "",
    "\n\n\n",
    "# only a comment",
    "model",
    "model m",
    "model m(",
    "model m() {",
    "model m() {}",
    "cell c(x[I]) -> h[H] {}\nmodel m(F = 2) {\n  input x: seq[F]\n  output y = c(3) over x\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = x[0:0]\n}",
    "model m(F = 2) {\n  input x: vec[F]\n  output y = repeat(x, 1000000000)\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = stack(bidir(stack(lstm(3), 2)), 2) over x\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = bidir(bidir(lstm(3))) over x from y\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  a = lstm(3) over x\n  output y = lstm(3) over a from a\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = split(x, 2)\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  a, b = split(x, 2)\n  output y = a - b\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = " + "(" * 60 + "x" + ")" * 60 + "\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = " + "-" * 150 + "x\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = " + " * ".join(["x"] * 500) + "\n}",
    "model m(F = 2) {\n  param W[" + " + ".join(["F"] * 500) + "]\n  input x: seq[F]\n"
    "  output y = x\n}",
    "model m(F = 2) {\n  param W[" + "9" * 5000 + "]\n  input x: seq[F]\n  output y = x\n}",
    "model m(F = " + "9" * 5000 + ") {\n  input x: seq[F]\n  output y = lstm(" + "9" * 5000
    + ") over x * " + "9" * 5000 + "\n}",
    "model m(F = 2) {\n  input x: seq[F]\n  output y = x * 0000000000000000000002\n}",
]


@pytest.mark.parametrize("text", EDGE_CASES, ids=[f"edge{k}" for k in range(len(EDGE_CASES))])
def test_edge_cases(text: str) -> None:
    check_front_end(text, "edge.rnn")
