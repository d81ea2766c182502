"""The LALR tables shipped in `rnnlang/syntax/_lalr_tables.py`: current with the grammar, used,
and parsing exactly as a parser built from the grammar does."""

from __future__ import annotations

from pathlib import Path

import pytest
from lark import Lark
from lark.exceptions import UnexpectedInput

from rnnlang.syntax import parse as P

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "examples").glob("*.rnn")) + sorted(
    (ROOT / "rnnlang" / "stdlib").glob("*.rnn"))
BAD = ["model m( {", "cell c(H) { state h[H]\n h = tanh(h[t-1] @ ) }", "model m() { input x: }",
       "x = = 1", "cell c(H) { param W[H, H] = glorot(1, }"]


def test_shipped_tables_are_current() -> None:
    """Built from this grammar, Lark version and options (Lark numbers its states differently
    in every process, so the text itself cannot be compared)."""
    from rnnlang.syntax import _lalr_tables

    assert _lalr_tables.DIGEST == P._digest(P._grammar()), (
        "the grammar changed: run `PYTHONHASHSEED=0 python -m rnnlang.syntax.make_tables`")


def test_the_shipped_tables_are_what_parses() -> None:
    P._parser.cache_clear()
    assert P._parser().source_path == "<deserialized>"


@pytest.fixture(scope="module")
def built() -> Lark:
    return Lark(P._grammar(), **P._LARK_OPTIONS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_loaded_tables_parse_like_a_built_parser(path: Path, built: Lark) -> None:
    text = path.read_text()
    assert P._parser().parse(text) == built.parse(text)


@pytest.mark.parametrize("text", BAD)
def test_loaded_tables_fail_like_a_built_parser(text: str, built: Lark) -> None:
    with pytest.raises(UnexpectedInput) as a:
        P._parser().parse(text)
    with pytest.raises(UnexpectedInput) as b:
        built.parse(text)
    assert (type(a.value), a.value.line, a.value.column) == (
        type(b.value), b.value.line, b.value.column)
