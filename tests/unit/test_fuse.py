"""fuse_gate_matmuls: products sharing their left operand become one matmul plus slices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import grad_program
from rnnlang.interp import run_program
from rnnlang.ir.nodes import ConstRef, Eqn, Program, ScanSpec, Tap, Var
from rnnlang.ir.printer import print_program
from rnnlang.ir.types import Dim
from rnnlang.ir.verify import verify
from rnnlang.passes.fuse import fuse_gate_matmuls
from rnnlang.runtime import bind_inputs, param_sizes, static_dims

Golden = Callable[[str, str], None]
ALL_PASSES = frozenset({"fuse_gate_matmuls", "hoist_input_projections", "dce"})
F64 = np.dtype("float64")
H = Dim.of("H")


def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64", disabled_passes=ALL_PASSES)
    return build_program(src, options=opts)[0]


def model(cell: str, layer: str = "c(H)") -> str:
    return cell + "\nmodel m(H=3, F=2) { input x: seq[F]  z = " + layer + " over x  output y = z }\n"


def values(prog: Program, seed: int, T: int = 4) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, 2, 2))
    b = bind_inputs(prog, static_dims(prog, {}), {"x": x}, np.array([T, max(1, T - 2)]), None,
                    F64)
    vals = dict(b.values)
    vals.update({k: rng.normal(size=s) for k, s in param_sizes(prog, b.dims).items()})
    return vals, b.dims


def same_semantics(a: Program, b: Program) -> None:
    for seed in range(2):
        vals, dims = values(a, seed)
        for u, v in zip(run_program(a, vals, dims, F64), run_program(b, vals, dims, F64),
                        strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def the_scan(p: Program) -> Eqn:
    (scan,) = [e for e in p.eqns if e.op == "scan"]
    return scan


def products(p: Program) -> list[tuple[str, str]]:
    """(left operand description, right operand's outer name) for each matmul in the body."""
    scan = the_scan(p)
    spec: ScanSpec = scan.attr("scan")
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    out = []
    for x in spec.body.eqns:
        if x.op != "matmul":
            continue
        w = binds[x.inputs[1].name]
        assert isinstance(w, ConstRef)
        a = x.inputs[0]
        ab = binds.get(a.name) if isinstance(a, Var) else None
        if isinstance(ab, Tap):
            src = scan.inputs[ab.source[1]] if ab.source[0] == "in" else scan.outputs[
                ab.source[1]]
            left = f"{src.name}[t{ab.offset:+d}]" if ab.offset else f"{src.name}[t]"
        else:
            left = "computed"
        out.append((left, scan.inputs[w.index].name))
    return out


TWO_GATES = model("""cell c(x[I]) -> h[H] {
  param Wf[I, H] = glorot
  param Wh[I, H] = glorot
  param U[H, H] = orthogonal
  f = sigmoid(x @ Wf + h[t-1] @ U)
  hc = tanh(x @ Wh)
  h = (1 - f) * h[t-1] + f * hc
}""")


def test_two_gates_golden(golden: Golden) -> None:
    raw = lowered(TWO_GATES)
    after = fuse_gate_matmuls(raw)
    verify(after)
    golden("two_gates_before", print_program(raw))
    golden("two_gates_after", print_program(after))
    # the weights are concatenated once, outside the loop
    (cat,) = [e for e in after.eqns if e.op == "concat"]
    assert [w.name for w in cat.inputs] == ["z.Wf", "z.Wh"]
    assert cat.outputs[0].shape == (Dim.of("F"), H.scale(2))
    assert cat.outputs[0] in the_scan(after).inputs
    assert products(after) == [("x[t]", "z.Wf+z.Wh"), ("z.h[t-1]", "z.U")]
    # ... and the body slices the fused product into the old values
    spec: ScanSpec = the_scan(after).attr("scan")
    slices = [(e.outputs[0].name, e.attr("start"), e.attr("stop")) for e in spec.body.eqns
              if e.op == "slice"]
    assert slices == [("x_Wf", Dim(), H), ("x_Wh", H, H.scale(2))]
    same_semantics(raw, after)


def test_mgu_products(golden: Golden) -> None:
    """mgu: x@Wf and x@Wh fuse; h[t-1]@Uf and (f*h[t-1])@Uh have different left operands."""
    raw = lowered(model("", "mgu(H)"))
    assert sorted(products(raw)) == [("computed", "z.Uh"), ("x[t]", "z.Wf"), ("x[t]", "z.Wh"),
                                     ("z.h[t-1]", "z.Uf")]
    after = fuse_gate_matmuls(raw)
    verify(after)
    golden("mgu_after", print_program(after))
    assert sorted(products(after)) == [("computed", "z.Uh"), ("x[t]", "z.Wf+z.Wh"),
                                       ("z.h[t-1]", "z.Uf")]
    same_semantics(raw, after)


def test_no_fusion_when_left_operands_differ() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  param W1[I, H] = glorot
  param W2[I, H] = glorot
  param U1[H, H] = orthogonal
  param U2[H, H] = orthogonal
  h = tanh(x @ W1 + x[t-1] @ W2 + h[t-1] @ U1 + h[t-2] @ U2 + (2.0 * h[t-1]) @ U2)
}""")
    raw = lowered(src)
    assert print_program(fuse_gate_matmuls(raw)) == print_program(raw)


def test_same_matrix_twice_is_not_fused() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  param W[I, H] = glorot
  param U[H, H] = orthogonal
  h = tanh(x @ W + sigmoid(x @ W) + h[t-1] @ U)
}""")
    raw = lowered(src)
    assert print_program(fuse_gate_matmuls(raw)) == print_program(raw)


def test_recurrent_products_fuse_and_widths_add_up() -> None:
    """h[t-1]@U1 and h[t-1]@U2 share their left operand too; widths may differ."""
    src = model("""cell c(x[I]) -> h[H] {
  param W1[I, H] = glorot
  param W2[I, 2*H] = glorot
  param W3[I, H] = glorot
  param U1[H, H] = orthogonal
  param U2[H, 2*H] = glorot
  a, b = split(x @ W2 + h[t-1] @ U2, 2)
  h = tanh(x @ W1 + a * sigmoid(x @ W3) + b + h[t-1] @ U1)
}""")
    raw = lowered(src)
    after = fuse_gate_matmuls(raw)
    verify(after)
    assert sorted(products(after)) == [("x[t]", "z.W2+z.W1+z.W3"), ("z.h[t-1]", "z.U2+z.U1")]
    spec: ScanSpec = the_scan(after).attr("scan")
    bounds = sorted((e.attr("start"), e.attr("stop")) for e in spec.body.eqns
                    if e.op == "slice" and "+" in e.inputs[0].name)
    two, three, four = H.scale(2), H.scale(3), H.scale(4)
    assert bounds == sorted([(Dim(), two), (two, three), (three, four),  # x @ [W2 W1 W3]
                             (Dim(), two), (two, three)])  # h[t-1] @ [U2 U1]
    same_semantics(raw, after)


def test_delayed_taps_fuse_separately() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  param W1[I, H] = glorot
  param W2[I, H] = glorot
  param U[H, H] = orthogonal
  h = tanh((x[t-2] @ W1) * (x[t-2] @ W2) + x @ W1 + h[t-1] @ U)
}""")
    raw = lowered(src)
    after = fuse_gate_matmuls(raw)
    verify(after)
    assert sorted(products(after)) == [("x[t-2]", "z.W1+z.W2"), ("x[t]", "z.W1"),
                                       ("z.h[t-1]", "z.U")]
    same_semantics(raw, after)


def test_reverse_scans_untouched_and_gradients_agree() -> None:
    raw = lowered(model("", "mgu(H)"))
    after = fuse_gate_matmuls(raw)
    g0, g1 = grad_program(raw), grad_program(after)
    for p in (g1.forward, g1.backward):
        verify(p)
    assert print_program(fuse_gate_matmuls(g0.backward)) == print_program(g0.backward)
    vals, dims = values(raw, 3)
    grads = []
    for g in (g0, g1):
        outs = run_program(g.forward, vals, dims, F64)
        v = dict(vals)
        v.update({r.name: o for r, o in zip(g.residuals, outs[1:], strict=True)})
        v[g.cotangents[0].name] = np.random.default_rng(5).normal(size=outs[0].shape)
        grads.append(run_program(g.backward, v, dims, F64))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole_lstm"])
def test_stdlib_gate_cells_unchanged_semantics(cell: str) -> None:
    """These already use one matrix per side; fusing leaves at most one product per operand."""
    raw = lowered(model("", f"{cell}(H)"))
    after = fuse_gate_matmuls(raw)
    verify(after)
    lefts = [left for left, _ in products(after)]
    assert len(lefts) == len(set(lefts))
    same_semantics(raw, after)
