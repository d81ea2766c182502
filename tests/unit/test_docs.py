"""The documentation and the examples stay true.

* Every ```rnn block of docs/language.md (and README.md, when present) is a complete spec: it
  passes `check_module`, and every model in it compiles and runs forward once on small random
  data with lengths (target "reference": no JIT).
* Every ```rnn-error block is rejected with an `RnnUserError`; when a ```text block follows it,
  that is exactly the rendered diagnostic (the block is parsed as ``example.rnn``).
* Every examples/*.rnn passes check and a reference-target forward for each of its models.
* A few semantic claims of the language reference are checked directly (masking, delays,
  naming, the PyTorch weight mapping).
* The tests at the end pin bugs found while writing the documentation (now fixed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang.api import Model
from rnnlang.diagnostics import RnnUserError
from rnnlang.lower import check_module
from rnnlang.syntax import ast
from rnnlang.syntax.parse import parse

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "language.md", ROOT / "README.md"]
EXAMPLES = sorted((ROOT / "examples").glob("*.rnn"))
ERROR_NAME = "example.rnn"  # source name used for ```rnn-error blocks
FILL_SIZE = 3  # value for model sizes without a default
T, B = 8, 2


# --- extracting blocks ---------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # line of the opening fence
    kind: str  # "rnn" or "rnn-error"
    text: str
    expected: str | None = None  # the ```text block right after an rnn-error block

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"


_FENCE = re.compile(r"^```([A-Za-z0-9_-]*)\s*$")


def _fenced(lines: list[str]) -> Iterator[tuple[int, str, str, int]]:
    """(opening line index, info string, body, closing line index) of each fenced block."""
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        yield i, m.group(1), "".join(x + "\n" for x in lines[i + 1 : j]), j
        i = j + 1


def extract_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    fences = list(_fenced(lines))
    out: list[Block] = []
    for k, (start, info, body, end) in enumerate(fences):
        if info not in ("rnn", "rnn-error"):
            continue
        expected = None
        if info == "rnn-error" and k + 1 < len(fences):
            nstart, ninfo, nbody, _ = fences[k + 1]
            if ninfo == "text" and all(not x.strip() for x in lines[end + 1 : nstart]):
                expected = nbody
        out.append(Block(doc, start + 1, info, body, expected))
    return out


def _all_blocks() -> list[Block]:
    return [b for d in DOCS if d.exists() for b in extract_blocks(d)]


BLOCKS = _all_blocks()
RNN_BLOCKS = [b for b in BLOCKS if b.kind == "rnn"]
ERROR_BLOCKS = [b for b in BLOCKS if b.kind == "rnn-error"]


# --- running a model on random data ---------------------------------------------------------
def compile_model(source: str | Path, name: str, fill: dict[str, int]) -> Model:
    return rnnlang.compile(source, target="reference", dtype="float64", model=name, seed=1,
                           **fill)


def compile_models(text: str) -> list[Model]:
    """Every model of a spec, sizes without a default set to FILL_SIZE."""
    module = parse(text)
    out = []
    for md in module.models:
        fill = {d.name: FILL_SIZE for d in md.dims if d.default is None}
        out.append(compile_model(text, md.name, fill))
    return out


def random_inputs(m: Model, rng: np.random.Generator) -> tuple[dict[str, np.ndarray],
                                                               dict[str, np.ndarray]]:
    inputs: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for info in m.program.inputs:
        if info.role not in ("seq", "vec"):
            continue
        name = info.var.name
        feat = info.var.shape[-1].evaluate(m.static)
        if info.role == "seq":
            inputs[name] = rng.normal(size=(T, B, feat))
            lengths[name] = np.array([T, T // 2 + 1])
        else:
            inputs[name] = rng.normal(size=(B, feat))
    return inputs, lengths


def _layers_in(e: ast.Expr) -> int:
    """How many named layers an expression creates (over, dense, conv1d)."""
    own = isinstance(e, ast.Over) or (isinstance(e, ast.Call) and e.func in ("dense", "conv1d"))
    return int(own) + sum(_layers_in(c) for c in ast.expr_children(e))


def check_names(m: Model) -> None:
    """Parameters and initial states are named after what the model writes (section 10):
    a model parameter by its name, a layer's by '<layer>.<...>' where <layer> is the statement's
    (first) name, then '<name>_1', '<name>_2' for further layers of the same statement."""
    module = parse(m.source_text)
    (md,) = [x for x in module.models if x.name == m.name]
    allowed: set[str] = set()
    for s in md.body:
        if isinstance(s, ast.ParamDecl):
            allowed.add(s.name)
        elif isinstance(s, (ast.Assign, ast.OutputDecl)):
            name = s.targets[0][0] if isinstance(s, ast.Assign) else s.name
            n = _layers_in(s.value)
            allowed.update([name] * (n > 0), (f"{name}_{k}" for k in range(1, n)))
    for name in [p.var.name for p in m.program.params] + m.state_names:
        assert name.split(".")[0] in allowed, f"{m.name}: unexpected name {name}"


def run_forward(m: Model, seed: int = 0) -> dict[str, np.ndarray]:
    inputs, lengths = random_inputs(m, np.random.default_rng(seed))
    out = m.forward(inputs, lengths=lengths or None)
    assert set(out) == set(m.output_names)
    for k, v in out.items():
        assert v.shape[-2 if v.ndim == 3 else 0] == B, k
        assert np.isfinite(v).all(), k
    return out


# --- documentation blocks -------------------------------------------------------------------
def test_docs_have_blocks() -> None:
    assert len(RNN_BLOCKS) >= 20
    assert ERROR_BLOCKS


@pytest.mark.parametrize("block", RNN_BLOCKS, ids=lambda b: b.id)
def test_doc_block_checks_and_runs(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    # imports in a block are relative to the document's folder
    monkeypatch.chdir(block.doc.parent)
    module = parse(block.text, block.id)
    assert module.models, f"{block.id}: a ```rnn block must define at least one model"
    progs = check_module(module, block.doc.parent)
    assert [p.name for p in progs] == [md.name for md in module.models]
    for m in compile_models(block.text):
        check_names(m)
        run_forward(m)


@pytest.mark.parametrize("block", ERROR_BLOCKS, ids=lambda b: b.id)
def test_doc_error_block_is_rejected(block: Block) -> None:
    with pytest.raises(RnnUserError) as info:
        check_module(parse(block.text, ERROR_NAME), None)
    if block.expected is not None:
        assert info.value.render() + "\n" == block.expected


# --- examples -------------------------------------------------------------------------------
def test_examples_exist() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"tagger", "elman", "seq2seq", "cnn_rnn", "tdnn", "custom_cells"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_checks_and_runs(path: Path) -> None:
    module = parse(path.read_text(encoding="utf-8"), str(path))
    progs = check_module(module, path.parent)
    assert progs
    for md in module.models:
        # `rnnc run examples/X.rnn` works as is: every size has a default
        assert all(d.default is not None for d in md.dims), f"{md.name}: give every size a default"
        m = compile_model(path, md.name, {})
        check_names(m)
        run_forward(m)


def test_rnnc_check_examples() -> None:
    import io

    from rnnlang.cli import main

    out = io.StringIO()
    assert main(["check", *map(str, EXAMPLES)], out=out) == 0
    assert out.getvalue().count(": ok (") == len(EXAMPLES)


# --- semantic claims of docs/language.md ----------------------------------------------------
def _ref(src: str, **dims: int) -> Model:
    return rnnlang.compile(src, target="reference", dtype="float64", **dims)


def test_claim_precedence() -> None:
    m = _ref("cell p(x[I]) -> y[I] {\n  param W[I, I] = identity(2)\n  y = 3 * x @ W - -x / 2 + 1\n}"
             "\nmodel m(F = 3) {\n  input x: seq[F]\n  output y = p() over x\n}")
    x = np.random.default_rng(0).normal(size=(4, 2, 3))
    np.testing.assert_allclose(m.forward({"x": x})["y"], 6 * x + x / 2 + 1)


def test_claim_over_extends_to_end_of_sum() -> None:
    m = _ref("model m(F = 3, H = 2) {\n  input x: seq[F]\n  param W[F, F] = identity\n"
             "  output y = lstm(H) over x @ W\n}")
    assert m.forward({"x": np.ones((2, 1, 3))})["y"].shape == (2, 1, 2)


def test_claim_masking_and_final_state() -> None:
    src = ("model m(F = 3, H = 4) {\n  input x: seq[F]\n  input z: seq[F]\n"
           "  enc = lstm(H) over x\n  dec = gru(H) over z from enc\n  output y = enc * 1\n"
           "  output d = dec * 1\n  output r = reverse(x)\n  output a = mean(x)\n}")
    m = _ref(src)
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(6, 2, 3)), rng.normal(size=(4, 2, 3))
    out = m.forward({"x": x, "z": z}, lengths={"x": np.array([6, 3])})
    assert (out["y"][3:, 1] == 0).all()
    alone = m.forward({"x": x[:3, 1:], "z": z[:, 1:]})
    np.testing.assert_allclose(out["y"][:3, 1], alone["y"][:, 0], atol=1e-12)
    np.testing.assert_allclose(out["d"][:, 1], alone["d"][:, 0], atol=1e-12)  # from: state at L-1
    np.testing.assert_allclose(out["r"][:3, 1], x[2::-1, 1])
    assert (out["r"][3:, 1] == 0).all()
    np.testing.assert_allclose(out["a"][1], x[:3, 1].mean(axis=0))
    assert m.state_names == ["enc.h0", "enc.c0"]  # a layer started `from` has no state inputs


def test_claim_delays_before_start() -> None:
    src = ("cell d(x[I]) -> s[I] {\n  s = x + 0 * s[t-1] + s[t-2]\n}\n"
           "cell e(x[I]) -> y[I] {\n  y = x[t-2]\n}\n"
           "model m(F = 1) {\n  input x: seq[F]\n  output s = d() over x\n  output y = e() over x\n}")
    m = _ref(src)
    x = np.arange(1.0, 5.0).reshape(4, 1, 1)
    out = m.forward({"x": x}, initial={"s.s0": np.array([[100.0]])})
    np.testing.assert_allclose(out["s"][:, 0, 0], [101, 102, 104, 106])  # s[t-2] = s0 for t < 2
    np.testing.assert_allclose(out["y"][:, 0, 0], [0, 0, 1, 2])  # x[t-2] = 0 for t < 2


def test_claim_names_of_layers_params_and_states() -> None:
    src = ("cell c(x[I]) -> h[H] {\n  state h[H] = learnable\n  param W[I, H] = glorot\n"
           "  h = tanh(x @ W) + h[t-1]\n}\n"
           "model m(F = 3, H = 2) {\n  input x: seq[F]\n  param Wy[2*H, 2] = glorot\n"
           "  deep = stack(bidir(elman(H)), 2) over x\n  wide = bidir(stack(gru(H), 2)) over x\n"
           "  learned = c(H) over x\n"
           "  output y = concat(last(lstm(H) over x), mean(gru(H) over x)) @ Wy\n"
           "  output proj = dense(deep, 2) + dense(wide, 2, relu) + dense(learned, 2)\n}")
    m = _ref(src)
    assert {"Wy", "deep.0.fwd.Wx", "deep.1.bwd.Ws", "wide.fwd.0.W", "wide.bwd.1.bh", "learned.W",
            "learned.h0", "y.W", "y_1.bx", "proj.W", "proj.b", "proj_1.W", "proj_2.b"} <= set(
        m.params)
    assert {"deep.0.fwd.s0", "wide.bwd.1.h0", "y.h0", "y.c0", "y_1.h0"} <= set(m.state_names)
    assert "learned.h0" not in m.state_names  # learnable initial state: a parameter, not an input


def test_claim_conv1d_lengths() -> None:
    m = _ref("cell count(x[I]) -> s[I] {\n  s = s[t-1] + 0 * x + 1\n}\n"
             "model m(F = 2) {\n  input x: seq[F]\n"
             "  c = conv1d(x, channels=2, kernel=3, stride=2, padding=1)\n"
             "  output n = mean(1 + 0 * c)\n  output steps = last(count() over c)\n}")
    out = m.forward({"x": np.ones((7, 3, 2))}, lengths=np.array([7, 4, 1]))
    np.testing.assert_allclose(out["n"], 1.0)  # mean over the valid steps of a constant
    # (L + 2*padding - kernel) // stride + 1 valid steps, at least 1
    np.testing.assert_allclose(out["steps"][:, 0], [4, 2, 1])


def test_claim_default_initializers() -> None:
    m = _ref("model m(F = 3) {\n  input x: seq[F]\n  param W[F, 4]\n  param b[4]\n"
             "  output y = dense(x @ W + b, 2)\n}")
    limit = np.sqrt(6.0 / (3 + 4))  # glorot(1) for [3, 4]
    assert 0 < np.abs(m.params["W"]).max() <= limit
    assert (m.params["b"] == 0).all() and (m.params["y.b"] == 0).all()
    assert 0 < np.abs(m.params["y.W"]).max() <= np.sqrt(6.0 / (4 + 2))
    assert m.forward({"x": np.ones((2, 1, 3))})["y"].shape == (2, 1, 2)


def _torch():  # type: ignore[no-untyped-def]
    return pytest.importorskip("torch")


def test_claim_pytorch_mapping_lstm_gru_elman() -> None:
    torch = _torch()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2, 3))
    h0 = rng.normal(size=(2, 4))
    c0 = rng.normal(size=(2, 4))

    def t2n(p):  # type: ignore[no-untyped-def]
        return p.detach().numpy().copy()

    m = _ref("model m(F = 3, H = 4) {\n  input x: seq[F]\n  output y = lstm(H) over x\n}")
    t = torch.nn.LSTM(3, 4).double()
    m.params.update({"y.W": t2n(t.weight_ih_l0).T, "y.U": t2n(t.weight_hh_l0).T,
                     "y.b": t2n(t.bias_ih_l0 + t.bias_hh_l0)})
    want, _ = t(torch.tensor(x), (torch.tensor(h0)[None], torch.tensor(c0)[None]))
    got = m.forward({"x": x}, initial={"y.h0": h0, "y.c0": c0})["y"]
    np.testing.assert_allclose(got, t2n(want), atol=1e-12)

    m = _ref("model m(F = 3, H = 4) {\n  input x: seq[F]\n  output y = gru(H) over x\n}")
    t = torch.nn.GRU(3, 4).double()
    m.params.update({"y.W": t2n(t.weight_ih_l0).T, "y.U": t2n(t.weight_hh_l0).T,
                     "y.bx": t2n(t.bias_ih_l0), "y.bh": t2n(t.bias_hh_l0)})
    want, _ = t(torch.tensor(x), torch.tensor(h0)[None])
    np.testing.assert_allclose(m.forward({"x": x}, initial={"y.h0": h0})["y"], t2n(want),
                               atol=1e-12)

    for act in ("tanh", "relu"):
        m = _ref("model m(F = 3, H = 4) {\n  input x: seq[F]\n"
                 f"  output y = elman(H, phi={act}) over x\n}}")
        t = torch.nn.RNN(3, 4, nonlinearity=act).double()
        m.params.update({"y.Wx": t2n(t.weight_ih_l0).T, "y.Ws": t2n(t.weight_hh_l0).T,
                         "y.b": t2n(t.bias_ih_l0 + t.bias_hh_l0)})
        want, _ = t(torch.tensor(x), torch.tensor(h0)[None])
        np.testing.assert_allclose(m.forward({"x": x}, initial={"y.s0": h0})["y"], t2n(want),
                                   atol=1e-12)


def test_claim_pytorch_mapping_stacked_bidir_packed() -> None:
    torch = _torch()
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3, 3))
    lengths = np.array([6, 2, 4])
    h0 = rng.normal(size=(4, 3, 4))
    c0 = rng.normal(size=(4, 3, 4))
    m = _ref("model m(F = 3, H = 4) {\n  input x: seq[F]\n"
             "  enc = stack(bidir(lstm(H)), 2) over x\n  output y = enc * 1\n}")
    t = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    initial = {}
    for k in range(2):
        for d, sfx in ((0, ""), (1, "_reverse")):
            name = f"enc.{k}.{('fwd', 'bwd')[d]}"
            w = {n: getattr(t, f"{n}_l{k}{sfx}").detach().numpy()
                 for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            m.params.update({f"{name}.W": w["weight_ih"].T.copy(),
                             f"{name}.U": w["weight_hh"].T.copy(),
                             f"{name}.b": w["bias_ih"] + w["bias_hh"]})
            initial[f"{name}.h0"] = h0[2 * k + d]
            initial[f"{name}.c0"] = c0[2 * k + d]
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), torch.tensor(lengths),
                                                     enforce_sorted=False)
    want, _ = t(packed, (torch.tensor(h0), torch.tensor(c0)))
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(want, total_length=6)
    got = m.forward({"x": x}, lengths=lengths, initial=initial)["y"]
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-12)


# --- bugs found while writing the documentation ---------------------------------------------
def _x(t: int = 4, b: int = 2, f: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(t, b, f))


def test_bug_output_alias_of_named_value() -> None:
    m = _ref("model m(F = 3, H = 2) {\n  input x: seq[F]\n  enc = lstm(H) over x\n"
             "  output y = enc\n  output z = last(enc)\n}")
    out = m.forward({"x": _x()})
    np.testing.assert_allclose(out["z"], out["y"][-1])


def test_bug_cell_alias_of_local() -> None:
    m = _ref("cell c(x[I]) -> h[I] {\n  a = tanh(x)\n  b = a\n  h = a + b\n}\n"
             "model m(F = 3) {\n  input x: seq[F]\n  output y = c() over x\n}")
    x = _x()
    np.testing.assert_allclose(m.forward({"x": x})["y"], 2 * np.tanh(x))


def test_bug_reference_vjp_plain_output() -> None:
    m = _ref("cell c(x[I]) -> y[I] {\n  state s[I]\n  s = s[t-1] + x\n  y = tanh(s)\n}\n"
             "model m(F = 3) {\n  input x: seq[F]\n  output y = c() over x\n}")
    g = m.vjp({"x": _x()}, {"y": np.ones((4, 2, 3))})
    assert g.inputs["x"].shape == (4, 2, 3)


def test_bug_unknown_size_is_user_error() -> None:
    m = _ref("model m(H, F) {\n  input x: seq[F]\n  output y = lstm(H) over x\n}")
    with pytest.raises(RnnUserError):
        m.forward({"x": _x()})


def test_bug_slice_past_end_is_user_error() -> None:
    m = _ref("model m(F = 3) {\n  input x: seq[F]\n  output y = x[5:9]\n}")
    with pytest.raises(RnnUserError):
        m.forward({"x": _x()})


def test_bug_size_named_b() -> None:
    src = "model m(B = 4, F = 3) {\n  input x: seq[F]\n  output y = lstm(B) over x\n}"
    try:
        m = _ref(src)
    except RnnUserError:
        return  # rejecting the name is a fine fix
    assert m.forward({"x": _x(b=2)})["y"].shape == (4, 2, 4)


def test_bug_layer_name_collides_with_internal_names() -> None:
    m = _ref("model m(F = 3, H = 2) {\n  input x: seq[F]\n  a = lstm(H) over x\n"
             "  c = lstm(H) over a\n  output y = c * 1\n}")
    assert {"c.W", "c.U", "c.b"} <= set(m.params)
    assert "c.h0" in m.state_names


def test_bug_strided_conv1d_without_lengths() -> None:
    m = _ref("model m(F = 2) {\n  input x: seq[F]\n"
             "  c = conv1d(x, channels=2, kernel=3, stride=2)\n  output y = c * 1\n}")
    assert m.forward({"x": np.ones((7, 1, 2))})["y"].shape == (3, 1, 2)
