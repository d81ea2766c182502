"""`rnnc gradflow`: dL/ds_t read from the derived BPTT equals finite differences; output files.

The finite differences perturb the value a forward scan stores for state s at step t: the scan
gets an extra input sequence added to that state just before it is stored, so the perturbation
reaches every reader of s_t (the next step, deeper delays, the next layer, the outputs) exactly
as the gradient does. Everything runs on the reference target in float64 (no JIT).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import cli
from rnnlang.api import Model
from rnnlang.cli_viz import add_commands
from rnnlang.interp import run_program
from rnnlang.ir.nodes import ConstRef, Eqn, Program, Region, ScanSpec, Store, Tap, Var
from rnnlang.ir.types import TensorType
from rnnlang.viz import gradflow as G

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gradflow_elman_lstm.rnn"

ELMAN = """
model m(F = 2, H = 3, O = 2) {
  input x: seq[F]
  param Wy[H, O] = glorot
  h = elman(H) over x
  output y = h @ Wy
}
"""
STACK = """
model m(F = 2, H = 3) {
  input x: seq[F]
  enc = stack(lstm(H), 2) over x
  output y = enc
  output z = mean(enc)
}
"""
DELAY2 = """
cell d2(x[I]) -> s[H] {
  param W[I, H]  = glorot
  param U1[H, H] = orthogonal
  param U2[H, H] = orthogonal(0.7)
  s = tanh(x @ W + s[t-1] @ U1 + s[t-2] @ U2)
}
model m(F = 2, H = 3) {
  input x: seq[F]
  a = d2(H) over x
  b = mgu(H) over a
  output y = last(b)
}
"""


def perturbed(prog: Program, layer: str, state: str) -> tuple[Program, Var]:
    """``prog`` with an input sequence added to ``layer.state`` before it is stored."""
    idx = next(i for i, e in enumerate(prog.eqns) if e.op == "scan" and
               f"{layer}.{state}" in [v.name for v in e.outputs])
    e = prog.eqns[idx]
    spec: ScanSpec = e.attr("scan")
    j = [v.name for v in e.outputs].index(f"{layer}.{state}")
    n = spec.n_seq
    delta = Var("fd.delta", e.outputs[j].type)

    def shift(i: int) -> int:  # operands after the sequences move up by one
        return i + 1 if i >= n else i

    in_bind: list[Tap | ConstRef] = []
    for b in spec.in_bind:
        if isinstance(b, ConstRef):
            in_bind.append(ConstRef(shift(b.index)))
        else:
            in_bind.append(replace(b, fallback=None if b.fallback is None else shift(b.fallback)))
    dv = Var("fd.dv", TensorType(delta.shape[1:]))
    in_bind.append(Tap(("in", n), 0, None))
    k = next(i for i, ob in enumerate(spec.out_bind) if isinstance(ob, Store) and ob.array == j)
    old = spec.body.outputs[k]
    new = Var("fd.new", old.type)
    outs = spec.body.outputs[:k] + (new,) + spec.body.outputs[k + 1:]
    body = Region(spec.body.inputs + (dv,), spec.body.eqns + (Eqn("add", (old, dv), (new,)),),
                  outs)
    arrays = tuple(replace(a, init=None if a.init is None else shift(a.init))
                   for a in spec.arrays)
    new_spec = replace(spec, n_seq=n + 1, arrays=arrays, body=body, in_bind=tuple(in_bind))
    eqns = list(prog.eqns)
    eqns[idx] = replace(e, inputs=e.inputs[:n] + (delta,) + e.inputs[n:],
                        attrs=(("scan", new_spec),))
    return replace(prog, eqns=tuple(eqns)), delta


def fd_grads(m: Model, x: np.ndarray, gf: G.GradFlow, layer: str, state: str,
             steps: list[int], eps: float = 1e-6) -> dict[int, np.ndarray]:
    prog, delta = perturbed(m.program, layer, state)
    b = m._bind({"x": x}, {}, None, None)
    base = dict(m.params)
    base.update(b.values)
    shape = tuple(d.evaluate(b.dims) for d in delta.shape)

    def loss(d: np.ndarray) -> float:
        vals = dict(base)
        vals[delta.name] = d
        outs = run_program(prog, vals, b.dims, np.dtype("float64"))
        total = 0.0
        for name, out in zip(m.program.output_names, outs, strict=True):
            w = gf.weights[name]
            total += float((out[-1] * w).sum() if out.ndim == 3 else (out * w).sum())
        return total

    res = {}
    for t in steps:
        g = np.zeros(shape[1:])
        for idx in np.ndindex(*shape[1:]):
            d = np.zeros(shape)
            d[(t, *idx)] = eps
            g[idx] = (loss(d) - loss(-d)) / (2 * eps)
        res[t] = g
    return res


@pytest.mark.parametrize("src", [ELMAN, STACK, DELAY2], ids=["elman", "lstm_stack", "delay2_mgu"])
def test_gradflow_equals_finite_differences(src: str) -> None:
    m = rnnlang.compile(src, target="reference", dtype="float64")
    T, B = 7, 2
    x = np.random.default_rng(5).normal(size=(T, B, 2))
    gf = G.gradient_flow(m, T, B, seed=1, inputs={"x": x})
    assert gf.flows
    for f in gf.flows:
        ts = [T - 1, T - 2, T - 4, 0]
        fd = fd_grads(m, x, gf, f.layer, f.state, ts)
        for t in ts:
            np.testing.assert_allclose(f.grads[t], fd[t], rtol=1e-6, atol=1e-9,
                                       err_msg=f"{f.name} at t={t}")
        expected = np.linalg.norm(f.grads, axis=-1).mean(axis=1)[::-1]
        np.testing.assert_allclose(f.norms, expected)


def test_flows_name_every_state_in_layer_order() -> None:
    m = rnnlang.compile(STACK, target="reference", dtype="float64")
    gf = G.gradient_flow(m, 4, 1)
    assert [(f.name, f.cell) for f in gf.flows] == [
        ("enc.0.h", "lstm"), ("enc.0.c", "lstm"), ("enc.1.h", "lstm"), ("enc.1.c", "lstm")]
    # the loss reads h at the last step, which is computed from c: c_(T-1) itself is unread
    assert gf.flows[1].norms[0] == 0 and gf.flows[0].norms[0] > 0


def test_summaries() -> None:
    norms = 0.5 ** np.arange(30.0)
    assert G.decay_rate(norms) == pytest.approx(0.5)
    assert G.steps_to_fall(norms) == 7  # 0.5**7 < 0.01
    assert G.steps_to_fall(np.ones(10)) is None
    assert G.decay_rate(np.zeros(10)) is None


@pytest.fixture(scope="module")
def example_flow() -> G.GradFlow:
    m = rnnlang.compile(EXAMPLE, target="reference")
    return G.gradient_flow(m, 30, 4)


def test_shipped_example_elman_decays_faster_than_lstm(example_flow: G.GradFlow) -> None:
    by = {f.name: f for f in example_flow.flows}
    assert set(by) == {"rnn.s", "lstm.h", "lstm.c"}
    elman = G.decay_rate(by["rnn.s"].norms)
    lstm = G.decay_rate(by["lstm.c"].norms)
    assert elman is not None and lstm is not None
    assert elman < 0.8 < lstm
    fall = G.steps_to_fall(by["rnn.s"].norms)
    assert fall is not None and 8 <= fall <= 20
    assert by["lstm.c"].norms[25] > 20 * by["rnn.s"].norms[25]


def test_table_and_csv(example_flow: G.GradFlow) -> None:
    text = G.table_text(example_flow)
    lines = text.splitlines()
    assert "rnn.s (elman)" in lines[1] and "lstm.c (lstm_fb)" in lines[1]
    assert len([ln for ln in lines if ln[:6].strip().isdigit()]) == 30  # T <= 30: every step
    assert "rnn.s (elman): x0." in text
    csv = G.csv_text(example_flow).splitlines()
    assert csv[0] == "k,rnn.s,lstm.h,lstm.c"
    assert len(csv) == 31
    assert float(csv[1].split(",")[1]) == pytest.approx(example_flow.flows[0].norms[0])


# --- the command ----------------------------------------------------------------------------
def rnnc(*argv: str) -> tuple[int, str]:
    p = argparse.ArgumentParser(prog="rnnc")
    sub = p.add_subparsers(dest="cmd")
    cmds = add_commands(sub, cli._common)
    args = p.parse_args(list(argv))
    out = io.StringIO()
    code = cmds[args.cmd](args, out)
    return code, out.getvalue()


SMALL = ["--steps", "12", "--batch", "2", "--target", "reference"]


def test_cli_gradflow_table_and_csv(tmp_path: Path) -> None:
    code, out = rnnc("gradflow", str(EXAMPLE), *SMALL, "-o", str(tmp_path / "f.csv"))
    assert code == 0
    assert out.startswith("||dL/ds_(T-k)||")
    assert (tmp_path / "f.csv").read_text().startswith("k,rnn.s,lstm.h,lstm.c\n")
    code, out = rnnc("gradflow", str(EXAMPLE), *SMALL, "-o", str(tmp_path / "f.txt"))
    assert code == 0 and (tmp_path / "f.txt").read_text() in out


def test_cli_gradflow_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code, out = rnnc("gradflow", str(EXAMPLE), *SMALL, "-o", str(tmp_path / "f.png"))
    assert code == 0 and f"wrote {tmp_path / 'f.png'}" in out
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_gradflow_without_matplotlib_writes_csv(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    code, _ = rnnc("gradflow", str(EXAMPLE), *SMALL, "-o", str(tmp_path / "f.png"))
    assert code == 0
    assert not (tmp_path / "f.png").exists()
    assert (tmp_path / "f.csv").read_text().startswith("k,")
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "f.csv" in err


def test_cli_gradflow_params_checkpoint(tmp_path: Path) -> None:
    m = rnnlang.compile(EXAMPLE, target="reference")
    m.params = {k: v * 0.5 for k, v in m.params.items()}
    m.save(tmp_path / "half.npz")
    _, plain_out = rnnc("gradflow", str(EXAMPLE), *SMALL)
    code, loaded_out = rnnc("gradflow", str(EXAMPLE), *SMALL, "--params",
                            str(tmp_path / "half.npz"))
    assert code == 0 and loaded_out != plain_out
    gf = G.gradient_flow(m, 12, 2, 0)
    assert f"{gf.flows[0].norms[3]:.3e}" in loaded_out


@pytest.mark.parametrize("argv", [["-o", "f.gif"], ["--steps", "0"], ["--batch", "0"]])
def test_cli_gradflow_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = rnnc("gradflow", str(EXAMPLE), *argv)
    assert code == 2
    assert capsys.readouterr().err.startswith("rnnc: error: ")


def test_layers_on_their_own_time_axis() -> None:
    """A layer over repeat(v, 16) runs 16 steps whatever --steps says."""
    m = rnnlang.compile(ROOT / "examples" / "generator.rnn", target="reference")
    gf = G.gradient_flow(m, 20, 2)
    assert [(f.name, len(f.norms)) for f in gf.flows] == [("h.h", 16)]
    assert len(G.csv_text(gf).splitlines()) == 17
    assert "all 16 steps" in G.table_text(gf) or "below 1%" in G.table_text(gf)
