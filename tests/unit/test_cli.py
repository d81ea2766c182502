"""`rnnc`: exit codes (0 ok, 1 user error, 2 usage, 3 bug), help, emits and messages.

Everything runs in-process through `rnnlang.cli.main`; nothing here JIT-compiles a model
(``--emit python`` only generates and loads the module; ``run`` uses the reference target).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

import rnnlang
from rnnlang import cli
from rnnlang.diagnostics import InternalCompilerError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.rnn"))
TAGGER = "examples/tagger.rnn"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def rnnc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


# --- help and version -------------------------------------------------------------------------

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = rnnc(capsys, "--version")
    assert code == 0
    assert out.strip() == f"rnnc (rnnlang) {rnnlang.__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["check", "--help"], ["compile", "--help"],
                                  ["run", "--help"]])
def test_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, *argv)
    assert code == 0
    assert out.startswith("usage: rnnc")
    assert err == ""


def test_help_lists_every_command_and_compile_options(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = rnnc(capsys, "--help")
    for cmd in ("check", "compile", "run"):
        assert cmd in out
    _, out, _ = rnnc(capsys, "compile", "--help")
    for opt in ("--emit", "-o", "-D", "--dump-after", "--timings", "-O0", "--verify"):
        assert opt in out


def test_no_command_prints_help_and_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = rnnc(capsys)
    assert code == 2
    assert "usage: rnnc" in out


# --- usage errors: exit 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["frobnicate", TAGGER], "invalid choice: 'frobnicate'"),
    (["check"], "the following arguments are required: files"),
    (["compile"], "the following arguments are required: file"),
    (["run"], "the following arguments are required: file"),
    (["compile", TAGGER, "--emit", "llvm"], "invalid choice: 'llvm'"),
    (["compile", TAGGER, "-D", "H"], "-D expects NAME=INT, got 'H'"),
    (["compile", TAGGER, "-D", "H=big"], "-D expects NAME=INT, got 'H=big'"),
    (["compile", TAGGER, "-D", "1H=4"], "-D expects NAME=INT, got '1H=4'"),
    (["compile", TAGGER, "-D", "H=-4"], "-D expects NAME=INT, got 'H=-4'"),
    (["compile", TAGGER, "--dtype", "float16"], "invalid choice: 'float16'"),
    (["compile", TAGGER, "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["run", TAGGER, "--steps", "0"], "--steps and --batch must be between 1 and 100000"),
    (["run", TAGGER, "--batch", "ten"], "invalid int value: 'ten'"),
])
def test_usage_errors_exit_2(argv: list[str], needle: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "rnnc: error:" in err
    assert "Traceback" not in err + out


# --- check ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXAMPLES + ["rnnlang/stdlib/cells.rnn"])
def test_check_examples(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "check", path)
    assert code == 0, err
    assert out.startswith(f"{path}: ok (")
    assert err == ""


def test_check_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = rnnc(capsys, "check", *EXAMPLES)
    assert code == 0
    assert len(out.splitlines()) == len(EXAMPLES)


@pytest.mark.parametrize("argv", [["check", "no/such/file.rnn"],
                                  ["compile", "no/such/file.rnn"],
                                  ["run", "no/such/file.rnn"]])
def test_missing_file(argv: list[str], capsys: pytest.CaptureFixture[str],
                      golden: Callable[[str, str], None]) -> None:
    code, out, err = rnnc(capsys, *argv)
    assert code == 1
    assert out == ""
    assert err == ("no/such/file.rnn: error[E003]: cannot read this file: "
                   "no such file or directory\n")
    golden(f"missing_file_{argv[0]}", f"exit {code}\n--- stderr\n{err}")


def test_directory_instead_of_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = rnnc(capsys, "check", "examples")
    assert code == 1
    assert err == "examples: error[E003]: cannot read this file: is a directory\n"


def test_device_instead_of_file(capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero never ends: it is refused before anything reads it."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    code, _, err = rnnc(capsys, "compile", "/dev/zero")
    assert code == 1
    assert "not a regular file" in err


def test_check_reports_user_errors_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "check", "tests/cli/bad/unknown_cell.rnn")
    assert code == 1
    assert out == ""
    assert err.startswith("tests/cli/bad/unknown_cell.rnn:3:14: error[E401]: unknown cell 'lstn'")


# --- compile ----------------------------------------------------------------------------------

def test_emit_ast(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "ast")
    assert code == 0, err
    assert out.startswith("Module(")
    assert "name='tagger'" in out
    assert "Span(" not in out  # spans are left out of the dump


def test_emit_ir(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir")
    assert code == 0, err
    assert out.startswith("program tagger")
    assert "scan" in out


def test_emit_ir_with_sizes_and_no_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir", "-D", "H=4", "-O0",
                          "--verify")
    assert code == 0, err
    assert out.startswith("program tagger")


def test_emit_grad_ir(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "grad-ir")
    assert code == 0, err
    assert out.count("program ") >= 2  # forward (with residuals) and backward


def test_dump_after_and_timings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir", "--dump-after", "all",
                          "--timings")
    assert code == 0, err
    assert out.startswith("program tagger")
    assert "--- IR after" in err
    assert " ms" in err


def test_emit_python(capsys: pytest.CaptureFixture[str], cache_dir: Path) -> None:
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "python", "--cache-dir",
                          str(cache_dir))
    assert code == 0, err
    assert out.startswith(f"# Generated by rnnlang {rnnlang.__version__} from {TAGGER}")
    ast.parse(out)


def test_emit_to_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                      cache_dir: Path) -> None:
    target = tmp_path / "tagger_gen.py"
    code, out, err = rnnc(capsys, "compile", TAGGER, "-o", str(target), "--cache-dir",
                          str(cache_dir))
    assert code == 0, err
    assert out == ""
    text = target.read_text()
    assert text.startswith("# Generated by rnnlang")
    ast.parse(text)
    code, _, _ = rnnc(capsys, "compile", TAGGER, "--emit", "ir", "-o", str(tmp_path / "t.ir"))
    assert code == 0
    assert (tmp_path / "t.ir").read_text().startswith("program tagger")


def test_compile_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir", "--model", "tager")
    assert code == 1
    assert err.startswith(f"{TAGGER}:3:1: error[E114]: no model named 'tager' in this file")
    assert "did you mean 'tagger'?" in err


def test_compile_file_without_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = rnnc(capsys, "compile", "rnnlang/stdlib/cells.rnn", "--emit", "ir")
    assert code == 1
    assert err.startswith("rnnlang/stdlib/cells.rnn:1:1: error[E113]: this file defines no model")


def test_compile_unknown_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir", "-D", "K=3")
    assert code == 1
    assert "'K'" in err
    assert "Traceback" not in err


def test_compile_user_error_in_spec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "compile", "tests/cli/bad/matmul_shape.rnn", "--emit", "ir")
    assert code == 1
    assert out == ""
    assert err.startswith("tests/cli/bad/matmul_shape.rnn:3:12: error[E203]")


# --- run --------------------------------------------------------------------------------------

def test_run_on_the_reference_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rnnc(capsys, "run", TAGGER, "--target", "reference", "--steps", "3",
                          "--batch", "2", "-D", "H=4")
    assert code == 0, err
    assert out.startswith(f"model tagger from {TAGGER}: inputs x; outputs y")
    assert "output y: shape (3, 2, 5)" in out
    assert "grad enc.0.W" in out


# --- internal errors: exit 3, say it is a bug -------------------------------------------------

@pytest.mark.parametrize("exc,kind", [
    (InternalCompilerError("scan has no body"), "internal compiler error"),
    (KeyError("boom"), "internal error (KeyError)"),
    (RecursionError("maximum recursion depth exceeded"), "internal error (RecursionError)"),
])
def test_internal_errors_exit_3(exc: Exception, kind: str, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kw: object) -> object:
        raise exc

    monkeypatch.setattr("rnnlang.lower.check_module", broken)
    code, out, err = rnnc(capsys, "check", TAGGER)
    assert code == 3
    assert err.startswith(f"rnnc: {kind}: ")
    assert "This is a bug in rnnlang, not in your spec" in err
    assert "Traceback" not in err


def test_internal_error_message_golden(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch,
                                       golden: Callable[[str, str], None]) -> None:
    def broken(*args: object, **kw: object) -> object:
        raise InternalCompilerError("verify: value v3 used before definition")

    monkeypatch.setattr("rnnlang.api.run_passes", broken)
    code, out, err = rnnc(capsys, "compile", TAGGER, "--emit", "ir")
    assert code == 3
    golden("internal_error", f"exit {code}\n--- stderr\n{err}")


def test_traceback_flag_shows_where_a_bug_happened(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kw: object) -> object:
        raise ValueError("bad invariant")

    monkeypatch.setattr("rnnlang.lower.check_module", broken)
    code, _, err = rnnc(capsys, "--traceback", "check", TAGGER)
    assert code == 3
    assert "Traceback (most recent call last)" in err
    assert "ValueError: bad invariant" in err


def test_keyboard_interrupt(capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kw: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr("rnnlang.lower.check_module", interrupted)
    code, _, err = rnnc(capsys, "check", TAGGER)
    assert code == 130
    assert err == "rnnc: interrupted\n"
