"""hoist_input_projections: products of input taps with loop-invariant matrices leave the loop."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import grad_program
from rnnlang.interp import run_program
from rnnlang.ir.nodes import ConstRef, Eqn, Program, ScanSpec, Tap, Var
from rnnlang.ir.printer import print_program
from rnnlang.ir.verify import verify
from rnnlang.passes.fuse import fuse_gate_matmuls
from rnnlang.passes.hoist import hoist_input_projections
from rnnlang.runtime import bind_inputs, param_sizes, static_dims

Golden = Callable[[str, str], None]
ALL_PASSES = frozenset({"fuse_gate_matmuls", "hoist_input_projections", "dce"})


def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64", disabled_passes=ALL_PASSES)
    return build_program(src, options=opts)[0]


def model(cell: str, layer: str = "c(H)") -> str:
    return cell + "\nmodel m(H=3, F=2) { input x: seq[F]  z = " + layer + " over x  output y = z }\n"


def interpret(prog: Program, seed: int = 0, T: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    f64 = np.dtype("float64")
    x = rng.normal(size=(T, 2, 2))
    b = bind_inputs(prog, static_dims(prog, {}), {"x": x}, np.array([T, max(1, T - 2)]), None, f64)
    vals = dict(b.values)
    for i in prog.inputs:
        if i.role == "state":
            vals[i.var.name] = rng.normal(size=vals[i.var.name].shape)
    vals.update({k: rng.normal(size=s) for k, s in param_sizes(prog, b.dims).items()})
    return run_program(prog, vals, b.dims, f64)


def same_semantics(a: Program, b: Program) -> None:
    for seed, T in ((0, 5), (1, 1), (2, 2)):  # T=1, 2: delayed taps fall off the start
        for u, v in zip(interpret(a, seed, T), interpret(b, seed, T), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


def scans(p: Program) -> list[Eqn]:
    return [e for e in p.eqns if e.op == "scan"]


def body_matmuls(e: Eqn) -> list[tuple[str, Tap | ConstRef | None]]:
    """(right operand's outer name, binding of the left operand) per matmul in the body."""
    spec: ScanSpec = e.attr("scan")
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    out = []
    for x in spec.body.eqns:
        if x.op == "matmul":
            w = binds[x.inputs[1].name]
            assert isinstance(w, ConstRef)
            a = x.inputs[0]
            out.append((e.inputs[w.index].name, binds.get(a.name) if isinstance(a, Var) else None))
    return out


ELMAN = "model m(H=3, F=2) { input x: seq[F]  z = elman(H) over x  output y = z }"
DELAYED = model("""cell c(x[I]) -> h[H] {
  param W[I, H] = glorot
  param V[I, H] = glorot
  param U[H, H] = orthogonal
  h = tanh(x @ W + x[t-2] @ W + x[t-1] @ V + h[t-1] @ U)
}""")


def test_elman_golden(golden: Golden) -> None:
    raw = lowered(ELMAN)
    after = hoist_input_projections(raw)
    verify(after)
    golden("elman_before", print_program(raw))
    golden("elman_after", print_program(after))
    same_semantics(raw, after)


def test_elman_projection_leaves_the_loop() -> None:
    after = hoist_input_projections(lowered(ELMAN))
    top = [e for e in after.eqns if e.op == "matmul"]
    assert [(e.inputs[0].name, e.inputs[1].name) for e in top] == [("x", "z.Wx")]
    (scan,) = scans(after)
    spec: ScanSpec = scan.attr("scan")
    # only the recurrent product is left in the body, and it reads h[t-1]
    ((w, left),) = body_matmuls(scan)
    assert w == "z.Ws"
    assert isinstance(left, Tap) and left.source[0] == "out" and left.offset == -1
    # the body reads the hoisted product at t and no longer reads x itself
    hoisted = top[0].outputs[0]
    assert hoisted in scan.inputs[: spec.n_seq]
    taps = [(scan.inputs[b.source[1]], b.offset) for b in spec.in_bind
            if isinstance(b, Tap) and b.source[0] == "in"]
    assert (hoisted, 0) in taps
    assert all(v.name != "x" for v, _ in taps)


def test_delayed_inputs_share_one_product(golden: Golden) -> None:
    raw = lowered(DELAYED)
    after = hoist_input_projections(raw)
    verify(after)
    golden("delayed_after", print_program(after))
    top = [(e.inputs[0].name, e.inputs[1].name) for e in after.eqns if e.op == "matmul"]
    assert top == [("x", "z.W"), ("x", "z.V")]  # x@W once for both x[t] and x[t-2]
    (scan,) = scans(after)
    spec: ScanSpec = scan.attr("scan")
    taps = sorted((scan.inputs[b.source[1]].name, b.offset, b.fallback) for b in spec.in_bind
                  if isinstance(b, Tap) and b.source[0] == "in" and "@" in
                  scan.inputs[b.source[1]].name)
    # delayed products read the hoisted array at the same offset; zeros before the start
    assert taps == [("x@z.V", -1, None), ("x@z.W", -2, None), ("x@z.W", 0, None)]
    assert [w for w, _ in body_matmuls(scan)] == ["z.U"]
    same_semantics(raw, after)


def test_recurrent_products_stay() -> None:
    """h[t-1] @ U, products of computed values, and state reads are not hoisted."""
    src = model("""cell c(x[I]) -> h[H] {
  state s[H]
  param U[H, H] = orthogonal
  param V[H, H] = glorot
  param W[I, H] = glorot
  s = tanh(s[t-1] @ U + (tanh(x @ W) * 2.0) @ V)
  h = sigmoid(h[t-2] @ U + s[t-1] @ V + s)
}""")
    raw = lowered(src)
    after = hoist_input_projections(raw)
    verify(after)
    assert [(e.inputs[0].name, e.inputs[1].name) for e in after.eqns if e.op == "matmul"] == [
        ("x", "z.W")]
    (scan,) = scans(after)
    lefts = sorted((w, "computed" if b is None else f"{b.source[0]}{b.offset}")
                   for w, b in body_matmuls(scan))
    assert lefts == [("z.U", "out-1"), ("z.U", "out-2"), ("z.V", "computed"), ("z.V", "out-1")]
    same_semantics(raw, after)


def test_no_input_products_is_identity() -> None:
    src = model("""cell c(x[I]) -> h[H] {
  param U[H, H] = orthogonal
  param g[I] = ones
  h = tanh(h[t-1] @ U + concat(x * g, x)[0:H])
}""")
    raw = lowered(src)
    assert print_program(hoist_input_projections(raw)) == print_program(raw)


def test_stacked_layers_each_hoist() -> None:
    raw = lowered("model m(H=3, F=2) { input x: seq[F]  z = stack(elman(H), 2) over x  "
                  "output y = z }")
    after = hoist_input_projections(raw)
    verify(after)
    top = [(e.inputs[0].name, e.inputs[1].name) for e in after.eqns if e.op == "matmul"]
    assert len(top) == 2 and top[0] == ("x", "z.0.Wx") and top[1][1] == "z.1.Wx"
    for scan in scans(after):
        assert [w.split(".")[-1] for w, _ in body_matmuls(scan)] == ["Ws"]
    same_semantics(raw, after)


def test_hoists_fused_product_as_one_gemm() -> None:
    raw = lowered("model m(H=3, F=2) { input x: seq[F]  z = lstm(H) over x  output y = z }")
    fused = fuse_gate_matmuls(raw)
    after = hoist_input_projections(fused)
    verify(after)
    top = [(e.inputs[0].name, e.inputs[1].type) for e in after.eqns if e.op == "matmul"]
    assert len(top) == 1 and top[0][0] == "x"
    same_semantics(raw, after)


def test_idempotent_and_reverse_scans_untouched() -> None:
    raw = lowered(DELAYED)
    once = hoist_input_projections(raw)
    assert print_program(hoist_input_projections(once)) == print_program(once)
    g = grad_program(raw)
    assert any(e.attr("scan").reverse for e in scans(g.backward))
    assert print_program(hoist_input_projections(g.backward)) == print_program(g.backward)


@pytest.mark.parametrize("cell", ["elman", "jordan(H, H)", "lstm", "gru", "peephole_lstm",
                                  "indrnn", "mgu"])
def test_stdlib_cells_hoist_every_input_product(cell: str) -> None:
    layer = cell if "(" in cell else f"{cell}(H)"
    raw = lowered(f"model m(H=3, F=2) {{ input x: seq[F]  z = {layer} over x  output y = z }}")
    after = hoist_input_projections(raw)
    verify(after)
    for scan in scans(after):
        spec: ScanSpec = scan.attr("scan")
        for _, left in body_matmuls(scan):
            assert not (isinstance(left, Tap) and left.source[0] == "in"), "input product left"
        # the body no longer reads the raw input x
        assert all(scan.inputs[b.source[1]].name != "x" for b in spec.in_bind
                   if isinstance(b, Tap) and b.source[0] == "in")
    same_semantics(raw, after)
