"""Nothing a user writes reaches generated code unchecked, and absurd specs fail early.

Names are grammar-restricted identifiers, but they become Python identifiers in the generated
module: names of Python builtins, keywords, the generated module's own globals and loop variables
must be renamed, and the program must still compute the same thing as the reference
interpreter. Source text only ever appears inside comments. Sizes, nesting and delays have limits
that are checked before anything is allocated.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import time
import tokenize
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import cli
from rnnlang.diagnostics import RnnUserError
from rnnlang.lower import check_module
from rnnlang.lower.builder import NameGen
from rnnlang.syntax.parse import MAX_NESTING, MAX_SOURCE_BYTES, MAX_TREE_DEPTH, parse

ROOT = Path(__file__).resolve().parents[2]
LONG = "n" + "a" * 2999

# Every name below is a Python keyword, builtin, module, or a name the code generator uses itself.
HOSTILE_SPEC = f"""
# cell, ports, states, params, activations and locals with hostile names
cell lambda(import[I]) -> class[H] {{
  fn print = tanh
  state __import__[H]
  param np[I, H] = glorot
  param dims[H, H] = orthogonal
  param DTYPE[H] = normal(0, 0.5)
  param kernels[H] = uniform(0, 1)
  def = import @ np + class[t-1] @ dims + DTYPE
  None = print(def) + 0.5 * __import__[t-1]
  __import__ = None * kernels
  class = __import__ * sigmoid(def) + (1 - sigmoid(def)) * class[t-1]
}}

cell {LONG}(over[I]) -> True[H] {{
  param math[I, H] = glorot
  param range[H] = zeros
  True = tanh(over @ math + range + True[t-2])
}}

model os(t = 3, i0 = 2, njit = 2, T = 4) {{
  input exec: seq[i0]
  input eval: vec[i0]
  param self[t, njit] = glorot
  param sum[njit] = normal(0, 1)
  i1 = lambda(t, print=relu) over exec
  h_prev = stack(lstm(t), 2) over i1
  __builtins__ = {LONG}(T) over i1
  mask_exec = dense(eval, njit, act=tanh)
  output len = h_prev @ self + sum
  output float = last(__builtins__)
  output tuple = mask_exec * 2
}}
"""
HOSTILE_NAMES = ["lambda", "import", "class", "print", "__import__", "np", "dims", "DTYPE",
                 "kernels", "def", "None", "True", "over", "math", "range", "os", "t", "i0",
                 "njit", "T", "exec", "eval", "self", "sum", "i1", "h_prev", "__builtins__",
                 "mask_exec", "len", "float", "tuple", LONG]


def short_id(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)} chars)"


def module_globals(tree: ast.Module) -> set[str]:
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Assign):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef):
            out.add(node.name)
    return out


def naming_problems(source: str) -> list[str]:
    """What would make the generated module unsafe: shadowed globals or builtins it uses,
    parameters it overwrites (such as a size variable sharing a user parameter's name)."""
    tree = ast.parse(source)
    glob = module_globals(tree)
    problems = []
    for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
        params = [a.arg for a in fn.args.args]
        stores = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Store)}
        loads = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Load)}
        used_builtins = {n for n in loads - set(params) - stores - glob if hasattr(builtins, n)}
        if len(set(params)) != len(params):
            problems.append(f"{fn.name}: repeated parameter names")
        if set(params) & stores:
            problems.append(f"{fn.name}: overwrites parameters {sorted(set(params) & stores)}")
        if (set(params) | stores) & glob:
            problems.append(f"{fn.name}: shadows globals {sorted((set(params) | stores) & glob)}")
        if (set(params) | stores) & {"range", "min", "max", "abs", "len"} & used_builtins:
            problems.append(f"{fn.name}: shadows builtins")
        unknown = loads - set(params) - stores - glob - set(dir(builtins))
        if unknown:
            problems.append(f"{fn.name}: undefined names {sorted(unknown)}")
    return problems


def text_outside_comments(source: str) -> list[tuple[int, str]]:
    """(token type, text) of every string and name token: what is not a comment."""
    return [(tok.type, tok.string)
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type in (tokenize.STRING, tokenize.NAME)]


def tiny_model(name: str, role: str) -> str:
    """A small model where ``name`` is a parameter, layer, input or output."""
    param = name if role == "param" else "Wq"
    layer = name if role == "layer" else "enc"
    inp = name if role == "input" else "x"
    out = name if role == "output" else "y"
    return (f"model m(H = 3, F = 2) {{\n  input {inp}: seq[F]\n  param {param}[H] = ones\n"
            f"  {layer} = gru(H) over {inp}\n  output {out} = sigmoid({layer}) * {param}\n}}\n")


# --- hostile names: compiled, run, compared -------------------------------------------------

@pytest.fixture(scope="module")
def hostile_models(cache_dir: Path) -> tuple[rnnlang.Model, rnnlang.Model]:
    cpu = rnnlang.compile(HOSTILE_SPEC, target="cpu", dtype="float64", cache_dir=cache_dir)
    ref = rnnlang.compile(HOSTILE_SPEC, target="reference", dtype="float64")
    return cpu, ref


def test_hostile_names_compute_the_same_as_the_reference(
        hostile_models: tuple[rnnlang.Model, rnnlang.Model]) -> None:
    cpu, ref = hostile_models
    assert set(cpu.params) == set(ref.params)
    assert {"self", "sum", "i1.np", "i1.dims", "i1.DTYPE", "i1.kernels",
            "__builtins__.math"} <= set(cpu.params)
    rng = np.random.default_rng(7)
    inputs = {"exec": rng.normal(size=(6, 3, 2)), "eval": rng.normal(size=(3, 2))}
    lengths = np.array([6, 4, 1])
    got = cpu.forward(inputs, lengths=lengths)
    want = ref.forward(inputs, lengths=lengths)
    assert list(got) == ["len", "float", "tuple"]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)


def test_hostile_names_generated_module_is_safe(
        hostile_models: tuple[rnnlang.Model, rnnlang.Model]) -> None:
    cpu, _ = hostile_models
    src = cpu.emit("python")
    assert naming_problems(src) == []
    tokens = text_outside_comments(src)
    for kind, text in tokens:
        if kind == tokenize.STRING:
            value = ast.literal_eval(text)
            assert not any(len(n) >= 3 and n in value for n in HOSTILE_NAMES), text
        else:
            assert text.isidentifier()
    # user text (the spec's lines) is only in comments
    code_only = "".join(t for _, t in tokens)
    assert "class[t-1] @ dims" not in code_only
    assert "# <string>:10  def = import @ np + class[t-1] @ dims + DTYPE" in src  # comments do


def test_hostile_names_in_the_ir_and_gradients(
        hostile_models: tuple[rnnlang.Model, rnnlang.Model]) -> None:
    cpu, _ = hostile_models
    assert "program os" in cpu.emit("ir")
    assert cpu.emit("grad-ir").count("program ") >= 2


@pytest.mark.parametrize("name", ["__import__", "os", "np", "dims", "t", "i0", "DTYPE", "kernels",
                                  "lambda", "class", "import", "from", "over", "None", "range",
                                  "print", "njit", "math", "exec", "B", "T", "mask_x", "x_W",
                                  "v_U", "m", "h_prev", LONG], ids=short_id)
@pytest.mark.parametrize("role", ["param", "layer", "input", "output"])
def test_names_in_each_role_give_safe_modules(name: str, role: str, cache_dir: Path) -> None:
    """Generated (not JIT-compiled): each name in each role is either rejected with a located
    error or renamed so that the module is plain, self-consistent Python."""
    try:
        m = rnnlang.compile(tiny_model(name, role), target="cpu", cache_dir=cache_dir)
    except RnnUserError as exc:
        assert all(d.span is not None for d in exc.diagnostics)
        return
    src = m.emit("python")
    assert naming_problems(src) == []
    m.emit("grad-ir")


def test_file_name_cannot_inject_code(tmp_path: Path, cache_dir: Path) -> None:
    """The file name is copied into the module's header comment."""
    spec = tmp_path / "evil\nimport os; os.system('false')\n.rnn"
    spec.write_text(tiny_model("Wq", "param"))
    m = rnnlang.compile(spec, target="cpu", cache_dir=cache_dir)
    src = m.emit("python")
    for line in src.splitlines():
        if "os.system" in line:
            assert line.lstrip().startswith("#")
    assert "os" not in {t for k, t in text_outside_comments(src) if k == tokenize.NAME}


@pytest.mark.parametrize("sep", ["\r", "\x0c", "\u2028", "\x85"])
def test_line_separators_in_comments_stay_in_comments(sep: str, cache_dir: Path) -> None:
    """Comments of the spec are copied next to the code they explain."""
    spec = tiny_model("Wq", "param").replace(
        "over x", f"over x  # ok{sep}import os; os.system('false')")
    m = rnnlang.compile(spec, target="cpu", cache_dir=cache_dir)
    src = m.emit("python")
    ast.parse(src)
    assert "os" not in {t for k, t in text_outside_comments(src) if k == tokenize.NAME}


# --- code generator naming: user names never shadow generated names -------------------------

def test_dunder_debug_as_a_name(cache_dir: Path) -> None:
    m = rnnlang.compile(tiny_model("__debug__", "param"), target="cpu", cache_dir=cache_dir)
    ast.parse(m.emit("python"))


@pytest.mark.parametrize("name", ["_ONE", "_ZERO", "_sigmoid32", "_tanh32", "K_0_0", "forward",
                                  "backward"])
def test_generated_globals_are_not_shadowed(name: str, cache_dir: Path) -> None:
    m = rnnlang.compile(tiny_model(name, "param"), target="cpu", cache_dir=cache_dir)
    assert naming_problems(m.emit("python")) == []


@pytest.mark.parametrize("name", ["n_H", "n_B"])
def test_size_variables_are_not_overwritten(name: str, cache_dir: Path) -> None:
    m = rnnlang.compile(tiny_model(name, "param"), target="cpu", cache_dir=cache_dir)
    assert naming_problems(m.emit("python")) == []


def test_keywords_of_python_are_renamed_in_generated_code(cache_dir: Path) -> None:
    m = rnnlang.compile(tiny_model("lambda", "param"), target="cpu", cache_dir=cache_dir)
    names = {t for k, t in text_outside_comments(m.emit("python")) if k == tokenize.NAME}
    assert not any(keyword.iskeyword(n) and n == "lambda" for n in names)


# --- limits: clear errors before any allocation ----------------------------------------------

def fails_fast(fn: object, *args: object, **kw: object) -> RnnUserError:
    """Run ``fn``: it must raise RnnUserError within seconds, allocating little."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(RnnUserError) as info:
            fn(*args, **kw)  # type: ignore[operator]
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0, elapsed
    assert peak < 64 * 2**20, peak
    return info.value


def test_source_size_limit() -> None:
    text = "#" * (MAX_SOURCE_BYTES + 1)
    err = fails_fast(parse, text, "big.rnn")
    d = err.diagnostics[0]
    assert d.code == "E001"
    assert "larger than the limit" in d.message
    assert d.span is not None and (d.span.line, d.span.col) == (1, 1)


def test_source_size_limit_for_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.rnn"
    big.write_text("#" * (MAX_SOURCE_BYTES + 10))
    assert fails_fast(rnnlang.compile, big).diagnostics[0].code == "E001"
    assert cli.main(["check", str(big)]) == 1
    assert "E001" in capsys.readouterr().err


def test_import_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.rnn").write_text("#" * (MAX_SOURCE_BYTES + 10))
    (tmp_path / "main.rnn").write_text('import "big.rnn"\n' + tiny_model("Wq", "param"))
    d = fails_fast(rnnlang.compile, tmp_path / "main.rnn").diagnostics[0]
    assert d.code == "E001" and d.span is not None and d.span.line == 1


def test_bracket_nesting_limit() -> None:
    deep = "(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1)
    err = fails_fast(parse, tiny_model("Wq", "param").replace("sigmoid(enc)", deep), "d.rnn")
    d = err.diagnostics[0]
    assert d.code == "E002"
    assert "nested deeper than" in d.message


@pytest.mark.parametrize("expr", [" + ".join(["x"] * (MAX_TREE_DEPTH + 10)),
                                  "-" * (MAX_TREE_DEPTH + 10) + "x",
                                  "x" + " * 2" * 1000], ids=["sum", "negation", "product"])
def test_expression_depth_limit(expr: str) -> None:
    src = f"model m(F = 2) {{\n  input x: seq[F]\n  output y = {expr}\n}}\n"
    d = fails_fast(parse, src, "d.rnn").diagnostics[0]
    assert d.code == "E002"
    assert d.span is not None and d.span.line == 3


def test_deep_but_allowed_expression_lowers() -> None:
    """Just under the limit: lowering must not hit Python's recursion limit."""
    expr = " + ".join(["x"] * (MAX_TREE_DEPTH - 10))
    src = f"model m(F = 2) {{\n  input x: seq[F]\n  output y = {expr}\n}}\n"
    assert check_module(parse(src, "d.rnn"), None)


@pytest.mark.parametrize("spec,dims", [
    ("examples/tagger.rnn", {"H": 10_000_000}),
    ("model m(H, F = 3) {\n  input x: seq[F]\n  output y = elman(H) over x\n}\n",
     {"H": 10_000_000}),
    ("model m(H, F = 3) {\n  input x: seq[F]\n  output y = elman(H) over x\n}\n",
     {"H": 1 << 30}),
])
def test_huge_sizes_fail_before_allocating(spec: str, dims: dict[str, int]) -> None:
    err = fails_fast(rnnlang.compile, spec, target="reference", **dims)
    msg = err.render()
    assert "limit" in msg or "out of range" in msg
    assert "Traceback" not in msg


def test_huge_sizes_on_the_command_line(capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code = cli.main(["compile", "examples/tagger.rnn", "--emit", "ir", "-D", "H=10000000"])
    err = capsys.readouterr().err
    assert code == 1
    assert "over the limit" in err


@pytest.mark.parametrize("body,code,needle", [
    ("  output y = elman(99999999999) over x", "E306", "larger than the limit"),
    ("  param W[H, 99999999999]\n  output y = x", "E306", "larger than the limit"),
    ("  output y = stack(lstm(H), 100000) over x", "E306", "between 1 and 64"),
    ("  output y = x * 1e999", "E102", "too large"),
    ("  output y = conv1d(x, channels=4, kernel=1000000)", "E306", "between 1 and 1024"),
    ("  a, b = split(x, 100000)\n  output y = a", "E306", "between 1 and 64"),
    ("  output y = lstm(H) over repeat(last(x), 2000000)", "E306", "between 1 and 1048576"),
], ids=["cell-size", "param-size", "stack", "number", "kernel", "split", "repeat"])
def test_absurd_numbers_are_located_errors(body: str, code: str, needle: str) -> None:
    src = f"model m(H = 4, F = 2) {{\n  input x: seq[F]\n{body}\n}}\n"
    d = fails_fast(lambda: check_module(parse(src, "n.rnn"), None)).diagnostics[0]
    assert d.code == code
    assert needle in d.message
    assert d.span is not None and d.span.line >= 3


def test_absurd_delay() -> None:
    src = ("cell c(x[I]) -> s[H] {\n  param W[I, H]\n  s = tanh(x @ W) + s[t-100000]\n}\n"
           "model m(H = 4, F = 2) {\n  input x: seq[F]\n  output y = c(H) over x\n}\n")
    d = fails_fast(lambda: check_module(parse(src, "n.rnn"), None)).diagnostics[0]
    assert d.code == "E311"
    assert d.message == "a delay of 100000 steps is longer than the limit of 1000"
    assert d.span is not None and (d.span.line, d.span.col) == (3, 23)


def test_many_statements_lower_in_linear_time() -> None:
    names = NameGen()
    t0 = time.perf_counter()
    for _ in range(50_000):
        names.fresh("mul")
    assert time.perf_counter() - t0 < 2.0
    assert names.fresh("mul") == "mul_50000"
