"""dce: every remaining equation contributes to an output; nothing live is removed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import grad_program
from rnnlang.interp import run_program
from rnnlang.ir.nodes import Eqn, Program, ScanSpec, Var
from rnnlang.ir.printer import print_program
from rnnlang.ir.verify import verify
from rnnlang.passes.dce import dce
from rnnlang.passes.pipeline import forward_passes
from rnnlang.runtime import bind_inputs, param_sizes, static_dims

Golden = Callable[[str, str], None]
ALL_PASSES = frozenset({"fuse_gate_matmuls", "hoist_input_projections", "dce"})
F64 = np.dtype("float64")


def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64", disabled_passes=ALL_PASSES)
    return build_program(src, options=opts)[0]


def model(cell: str, body: str) -> str:
    return cell + "\nmodel m(H=3, F=2) { input x: seq[F]  " + body + " }\n"


def values(prog: Program, seed: int = 0, T: int = 4) -> tuple[dict[str, np.ndarray],
                                                             dict[str, int]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, 2, 2))
    b = bind_inputs(prog, static_dims(prog, {}), {"x": x}, np.array([T, 2]), None, F64)
    vals = dict(b.values)
    vals.update({k: rng.normal(size=s) for k, s in param_sizes(prog, b.dims).items()})
    return vals, b.dims


def same_semantics(a: Program, b: Program) -> None:
    vals, dims = values(a)
    for u, v in zip(run_program(a, vals, dims, F64), run_program(b, vals, dims, F64),
                    strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def assert_all_live(eqns: tuple[Eqn, ...], outputs: tuple[Var, ...], where: str) -> None:
    """Each equation has an output read later or returned; scans are checked inside too."""
    used = {v.name for v in outputs}
    for e in reversed(eqns):
        assert any(v.name in used for v in e.outputs), f"{where}: dead {e.op} -> {e.outputs}"
        used.update(x.name for x in e.inputs if isinstance(x, Var))
        spec = e.attr("scan")
        if spec is not None:
            assert_all_live(spec.body.eqns, spec.body.outputs, f"body of {e.outputs[0].name}")
            inner = {x.name for b in spec.body.eqns for x in b.inputs if isinstance(x, Var)}
            inner |= {v.name for v in spec.body.outputs}
            unused = [v.name for v in spec.body.inputs if v.name not in inner]
            assert not unused, f"{where}: unused body inputs {unused}"


def ops(p: Program) -> list[str]:
    return [e.op for e in p.eqns]


ELMAN = "model m(H=3, F=2) { input x: seq[F]  z = elman(H) over x  output y = z }"


def test_elman_golden(golden: Golden) -> None:
    raw = lowered(ELMAN)
    after = dce(raw)
    verify(after)
    golden("elman_after", print_program(after))
    assert "last" in ops(raw) and "last" not in ops(after)  # the unused final state
    assert_all_live(after.eqns, after.outputs, "program")
    same_semantics(raw, after)


def test_dead_cell_locals_and_their_inputs_go() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  param W[I, H] = glorot
  param V[I, H] = glorot
  param U[H, H] = orthogonal
  unused = sigmoid(x @ V) * h[t-2]
  h = tanh(x @ W + h[t-1] @ U)
}""", "z = c(H) over x  output y = z")
    raw = lowered(src)
    after = dce(raw)
    verify(after)
    spec: ScanSpec = next(e for e in after.eqns if e.op == "scan").attr("scan")
    names = {v.name for v in spec.body.inputs}
    assert not {"V", "h_t2"} & names and {"W", "U", "h_prev"} <= names
    assert "sigmoid" not in [e.op for e in spec.body.eqns]
    assert_all_live(after.eqns, after.outputs, "program")
    same_semantics(raw, after)


def test_dead_layer_removed_live_layer_kept(golden: Golden) -> None:
    src = model("", "a = elman(H) over x  b = gru(H) over x  c = last(b)  output y = a")
    raw = lowered(src)
    after = dce(raw)
    verify(after)
    golden("dead_layer_after", print_program(after))
    scans = [e for e in after.eqns if e.op == "scan"]
    assert [e.outputs[0].name for e in scans] == ["a.s"]
    assert len(after.params) == len(raw.params)  # parameters are the model's interface
    assert_all_live(after.eqns, after.outputs, "program")
    same_semantics(raw, after)


def test_state_arrays_of_live_scans_stay() -> None:
    """lstm's c array is not an output, but its scan is live: every array is kept."""
    raw = lowered(model("", "z = lstm(H) over x  output y = z"))
    after = dce(raw)
    (scan,) = [e for e in after.eqns if e.op == "scan"]
    assert [v.name for v in scan.outputs] == ["z.h", "z.c"]
    same_semantics(raw, after)


def test_body_input_returned_directly_is_kept() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  state s[H]
  param W[I, H] = glorot
  s = tanh(x @ W + s[t-1])
  h = s[t-1]
}""", "z = c(H) over x  output y = z")
    raw = lowered(src)
    after = dce(raw)
    verify(after)
    spec: ScanSpec = next(e for e in after.eqns if e.op == "scan").attr("scan")
    assert set(spec.body.outputs) <= set(spec.body.inputs) | {
        v for e in spec.body.eqns for v in e.outputs}
    same_semantics(raw, after)


def test_gradient_programs_lose_mask_cotangents() -> None:
    """The docstring's example: autodiff emits d_mask.x = sum_to(...), which nobody reads."""
    g = grad_program(dce(lowered(ELMAN)))
    names = [v.name for e in g.backward.eqns for v in e.outputs]
    assert "d_mask.x" in names
    after = dce(g.backward)
    verify(after)
    assert "d_mask.x" not in [v.name for e in after.eqns for v in e.outputs]
    assert_all_live(after.eqns, after.outputs, "backward")
    assert after.outputs == g.backward.outputs


@pytest.mark.parametrize("cell", ["elman", "jordan(H, H)", "lstm", "gru", "peephole_lstm",
                                  "indrnn", "mgu"])
def test_after_pipeline_everything_is_live(cell: str) -> None:
    layer = cell if "(" in cell else f"{cell}(H)"
    raw = lowered(model("", f"z = {layer} over x  output y = z"))
    prog = raw
    for _, fn in forward_passes():
        prog = fn(prog, None)
    assert_all_live(prog.eqns, prog.outputs, "program")
    again = dce(prog)
    assert print_program(again) == print_program(prog)  # idempotent
    same_semantics(raw, prog)
    g = grad_program(prog)
    for p in (g.forward, g.backward):
        q = dce(p)
        verify(q)
        assert_all_live(q.eqns, q.outputs, p.name)
