"""User-facing errors: one golden `rnnc check` transcript per kind of mistake, plus rendering.

Every file in tests/cli/bad/ holds one mistake. `rnnc check` must exit 1 and print
``FILE:LINE:COL: error[CODE]: message``, the source line, a caret under the span and a hint where
one helps, never a Python traceback. The goldens (tests/golden/test_diagnostics/) were read one by
one: when a message is poor, fix the compiler, then rerun ``pytest --update-golden``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import rnnlang
from rnnlang import cli
from rnnlang.diagnostics import (
    Collector,
    Diagnostic,
    RnnUserError,
    Source,
    Span,
    did_you_mean,
    error,
)
from rnnlang.lower import check_module
from rnnlang.syntax.parse import parse

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "cli" / "bad"

# file -> the error code it must produce (every file in tests/cli/bad/ must be listed here)
EXPECTED: dict[str, str] = {
    "syntax_unexpected_token": "E101",
    "unexpected_character": "E100",
    "unexpected_eof": "E101",
    "keyword_as_name": "E101",
    "number_too_large": "E102",
    "too_deep": "E002",
    "expression_too_deep": "E002",
    "unknown_name": "E202",
    "unknown_function": "E201",
    "unknown_cell": "E401",
    "matmul_shape": "E203",
    "row_vector_convention": "E204",
    "elementwise_shape": "E203",
    "cell_output_size": "E203",
    "split_not_divisible": "E207",
    "slice_out_of_range": "E205",
    "recurrence_without_state": "E310",
    "use_before_assignment": "E303",
    "bad_delay_future": "E311",
    "bad_delay_fraction": "E311",
    "bad_delay_huge": "E311",
    "delay_outside_cell": "E301",
    "duplicate_definition": "E210",
    "duplicate_local": "E210",
    "duplicate_size": "E210",
    "duplicate_cell": "E112",
    "duplicate_model": "E115",
    "cell_param_twice": "E210",
    "state_never_assigned": "E212",
    "wrong_number_of_targets": "E209",
    "unknown_size": "E304",
    "size_not_positive": "E306",
    "size_too_large": "E306",
    "unknown_initializer": "E502",
    "initializer_wrong_rank": "E503",
    "initializer_arguments": "E504",
    "bad_import": "E111",
    "import_cycle": "E110",
    "import_cycle_b": "E110",
    "no_outputs": "E215",
    "over_non_sequence": "E407",
    "layer_without_over": "E414",
    "from_mismatched_states": "E410",
    "from_stack_mismatch": "E410",
    "from_not_a_layer": "E408",
    "wrong_cell_arguments": "E403",
    "unknown_activation_fn": "E404",
    "unknown_activation_override": "E404",
    "unknown_input_kind": "E216",
    "two_input_cell": "E416",
}

BAD_FILES = sorted(p.stem for p in BAD.glob("*.rnn"))
HEADER = re.compile(r"^(?P<file>[^\s:]+\.rnn):(?P<line>\d+):(?P<col>\d+): "
                    r"error\[(?P<code>E\d{3})\]: (?P<msg>.+)$")


def run_check(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["check", path])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_every_bad_file_has_an_expected_code() -> None:
    assert set(BAD_FILES) == set(EXPECTED), "list new files in EXPECTED (and remove old ones)"


@pytest.mark.parametrize("stem", BAD_FILES)
def test_check_bad_file_golden(stem: str, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch,
                               golden: Callable[[str, str], None]) -> None:
    monkeypatch.chdir(ROOT)
    rel = f"tests/cli/bad/{stem}.rnn"
    code, out, err = run_check(rel, capsys)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    first = err.splitlines()[0]
    m = HEADER.match(first)
    assert m is not None, first
    assert m["code"] == EXPECTED[stem]
    assert m["file"].startswith("tests/cli/bad/"), "paths are shown as the user gave them"
    assert not m["msg"][0].isupper(), "messages start lower-case"
    lines = err.splitlines()
    # the source line, then a caret under the reported column
    src_line, caret_line = lines[1], lines[2]
    assert src_line.startswith(f" {m['line']} | ")
    assert caret_line.rstrip().endswith("^")
    golden(stem, f"exit {code}\n--- stderr\n{err}")


@pytest.mark.parametrize("stem", BAD_FILES)
def test_caret_points_at_the_reported_column(stem: str) -> None:
    path = BAD / f"{stem}.rnn"
    with pytest.raises(RnnUserError) as info:
        check_module(*rnnlang.parse_program(path))
    d = info.value.diagnostics[0]
    assert d.span is not None
    text = d.span.source.line(d.span.line)
    assert 1 <= d.span.col <= len(text) + 1
    rendered = d.render().splitlines()
    caret = rendered[2].split("| ", 1)[1]
    shown = rendered[1].split("| ", 1)[1]
    if len(text) <= 100:  # short lines are shown whole: the caret sits under the span
        assert shown == text.expandtabs(1)
        assert caret.index("^") == d.span.col - 1


def test_all_bad_files_at_once(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Several files: each error is reported, nothing is printed as ok for bad files."""
    monkeypatch.chdir(ROOT)
    files = [f"tests/cli/bad/{s}.rnn" for s in ("unknown_name", "matmul_shape")] + [
        "examples/tagger.rnn"]
    code = cli.main(["check", *files])
    got = capsys.readouterr()
    assert code == 1
    assert "examples/tagger.rnn: ok" in got.out
    assert "unknown_name.rnn:5:14: error[E202]" in got.err
    assert "matmul_shape.rnn:3:12: error[E203]" in got.err


def test_errors_from_several_models_are_all_reported() -> None:
    src = ("model a(H = 4, F = 2) {\n  input x: seq[F]\n  output y = lsm(H) over x\n}\n"
           "model b(H = 4, F = 2) {\n  input x: seq[F]\n  output y = xx\n}\n")
    with pytest.raises(RnnUserError) as info:
        check_module(parse(src, "two.rnn"), None)
    assert [d.code for d in info.value.diagnostics] == ["E401", "E202"]
    assert [d.span.line for d in info.value.diagnostics if d.span] == [3, 7]


def test_api_raises_the_same_user_error() -> None:
    with pytest.raises(RnnUserError) as info:
        rnnlang.compile(BAD / "unknown_cell.rnn", target="reference")
    assert "did you mean 'lstm'?" in info.value.render()


# --- the error messages of individual mistakes ------------------------------------------------

def first_error(src: str) -> Diagnostic:
    with pytest.raises(RnnUserError) as info:
        check_module(parse(src, "t.rnn"), None)
    return info.value.diagnostics[0]


def model(body: str) -> str:
    return f"model m(H = 8, F = 4) {{\n  input x: seq[F]\n{body}\n}}\n"


def test_shapes_inside_a_cell_use_the_cells_size_names() -> None:
    d = first_error("cell c(x[I]) -> h[H] {\n  param W[H, H]\n  h = x @ W\n}\n"
                    + model("  output y = c(H) over x"))
    assert d.message == ("cannot multiply [I] by [H, H]: the vector has I entries but the matrix "
                         "has H rows")
    assert d.hint == "the matrix needs I rows to match the vector, e.g. param W[I, H]"
    assert d.notes == ("in c(H) applied at t.rnn:7:14, where I = F, H = H",)


def test_shapes_inside_a_stacked_cell_fall_back_to_model_sizes() -> None:
    """Second layer of a stack: I = H and H = H, so the cell's names are ambiguous."""
    d = first_error("cell c(x[I]) -> h[H] {\n  param W[I, H]\n  param b[I]\n  h = x @ W + b\n}\n"
                    + model("  output y = stack(c(2*H), 2) over x"))
    assert d.message == "shapes do not match: [2*H] + [F]"
    assert "where I = F, H = 2*H" in d.notes[0]


def test_from_with_a_state_of_another_size() -> None:
    d = first_error(model("  enc = lstm(2*H) over x\n  output y = lstm(H) over x from enc"))
    assert d.code == "E410"
    assert d.span is not None and (d.span.line, d.span.col) == (4, 14)
    assert "size 2*H" in d.message


def test_keyword_used_as_a_name() -> None:
    d = first_error("cell c(x[I]) -> h[H] {\n  param W[I, H] = glorot\n  output = x @ W\n}\n")
    assert d.message == "unexpected 'output'"
    assert d.hint == "'output' is a keyword and cannot be used as a name"


@pytest.mark.parametrize("src,line,col,hint", [
    ("model m(", 1, 9, "')' is missing: the '(' at line 1, column 8 is never closed"),
    ("model m() {\n  input x: seq[F]\n  # only a comment\n", 2, 18,
     "'}' is missing: the '{' at line 1, column 11 is never closed"),
    ('import "a.rnn', 1, 8, None),
])
def test_unexpected_end_of_file_points_after_the_last_token(src: str, line: int, col: int,
                                                            hint: str | None) -> None:
    with pytest.raises(RnnUserError) as info:
        parse(src, "t.rnn")
    d = info.value.diagnostics[0]
    assert d.span is not None and (d.span.line, d.span.col) == (line, col)
    if hint is not None:
        assert d.hint == hint


@pytest.mark.parametrize("ch", ["\x00", "\x07", "\x1b", "\x7f", "\ud800"])
def test_control_characters_are_rejected_even_in_comments(ch: str) -> None:
    """They would otherwise be copied into comments of the generated Python module."""
    src = model(f"  output y = lstm(H) over x  # note {ch} here")
    with pytest.raises(RnnUserError) as info:
        parse(src, "t.rnn")
    d = info.value.diagnostics[0]
    assert d.code == "E100"
    assert d.span is not None and (d.span.line, d.span.col) == (3, 37)
    assert f"U+{ord(ch):04X}" in d.message
    assert ch not in d.render()


def test_line_numbers_count_only_newlines() -> None:
    """Form feeds, U+2028 and lone CRs do not start lines for the parser: nor for diagnostics."""
    src = "# a\x0cb\u2028c\rd\nmodel m(H = 8, F = 4) {\n  input x: seq[F]\n  output y = $\n}\n"
    with pytest.raises(RnnUserError) as info:
        parse(src, "t.rnn")
    d = info.value.diagnostics[0]
    assert d.span is not None and (d.span.line, d.span.col) == (4, 14)
    assert " 4 |   output y = $" in d.render()


def test_windows_line_endings() -> None:
    src = model("  output y = lstm(H) over xx").replace("\n", "\r\n")
    d = first_error(src)
    assert d.span is not None and (d.span.line, d.span.col) == (3, 27)
    assert "\r" not in d.render()


# --- rendering --------------------------------------------------------------------------------

def test_render_layout() -> None:
    src = Source("f.rnn", "line one\n  h = tanh(x @ Wq)\n")
    d = Diagnostic("E202", "unknown name 'Wq'", Span(src, 2, 17, 2, 19), ("a note",),
                   "did you mean 'W'?")
    assert d.render() == (
        "f.rnn:2:17: error[E202]: unknown name 'Wq'\n"
        " 2 |   h = tanh(x @ Wq)\n"
        "   |                 ^^\n"
        "   note: a note\n"
        "   hint: did you mean 'W'?")


def test_render_without_span() -> None:
    assert error("E601", "size H is unknown", None, hint="pass H=...").render() == (
        "error[E601]: size H is unknown\n   hint: pass H=...")


def test_render_tabs_keep_the_caret_aligned() -> None:
    src = Source("f.rnn", "\th =\tx $\n")
    d = Diagnostic("E100", "unexpected character '$'", Span(src, 1, 8, 1, 9))
    shown, caret = d.render().splitlines()[1:]
    assert shown.split("| ")[1][caret.split("| ")[1].index("^")] == "$"


def test_render_multi_line_span_underlines_to_the_end_of_the_first_line() -> None:
    src = Source("f.rnn", "model m() {\n}\n")
    caret = Diagnostic("E215", "x", Span(src, 1, 1, 2, 2)).render().splitlines()[2]
    assert caret == "   | " + "^" * len("model m() {")


def test_render_long_lines_show_a_window_around_the_span() -> None:
    text = "a" * 500 + "$" + "b" * 500
    d = Diagnostic("E100", "unexpected character '$'", Span(Source("f.rnn", text), 1, 501, 1, 502))
    _, shown, caret = d.render().splitlines()
    assert len(shown) < 130
    assert shown.split("| ")[1].startswith("...") and shown.endswith("...")
    assert shown.split("| ")[1][caret.split("| ")[1].index("^")] == "$"


def test_render_span_past_the_end_of_the_file() -> None:
    d = Diagnostic("E101", "unexpected end of file", Span(Source("f.rnn", ""), 1, 1, 1, 2))
    assert d.render() == "f.rnn:1:1: error[E101]: unexpected end of file"


def test_did_you_mean() -> None:
    assert did_you_mean("lstn", ["lstm", "gru"]) == "did you mean 'lstm'?"
    assert did_you_mean("qqq", ["lstm", "gru"]) is None


def test_collector_caps_the_number_of_diagnostics() -> None:
    src = Source("f.rnn", "x\n")
    coll = Collector(limit=3)
    with pytest.raises(RnnUserError) as info:
        for k in range(10):
            coll.add(error("E202", f"unknown name 'a{k}'", Span(src, 1, 1, 1, 2)))
    assert len(info.value.diagnostics) == 3
    Collector().raise_if_any()  # nothing collected: no error
