"""BPTT on the IR: the shape of the derived reverse scan, and its numbers.

Structure is checked on `grad_program`'s direct output (before the backward passes); values are
checked with the interpreter against the hand-written BPTT of ``tests/reference.py`` and against
central differences for deeper delays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

import rnnlang
from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import GradPrograms, grad_program
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import ConstRef, Eqn, Program, ScanSpec, Store, SumTo, Tap
from rnnlang.ir.printer import print_program
from rnnlang.ir.verify import verify
from rnnlang.passes.pipeline import BACKWARD, forward_passes
from tests import reference as R

Golden = Callable[[str, str], None]
ALL_PASSES = frozenset({"fuse_gate_matmuls", "hoist_input_projections", "dce"})


def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64", disabled_passes=ALL_PASSES)
    return build_program(src, options=opts)[0]


def optimized(src: str) -> Program:
    p = lowered(src)
    for _, fn in forward_passes():
        p = fn(p, None)
    return p


def model(layer: str, extra: str = "") -> str:
    return f"model m(H=3, F=2) {{ input x: seq[F]  z = {layer} over x  output y = z  {extra}}}"


def reverse_scan(p: Program) -> tuple[Eqn, ScanSpec]:
    (e,) = [e for e in p.eqns if e.op == "scan"]
    return e, e.attr("scan")


ELMAN = model("elman(H)")


@pytest.fixture(scope="module")
def elman() -> GradPrograms:
    return grad_program(optimized(ELMAN))


def test_elman_goldens(elman: GradPrograms, golden: Golden) -> None:
    golden("elman_backward", print_program(elman.backward))
    after = elman.backward
    for _, fn in BACKWARD:
        after = fn(after, None)
    verify(after)
    golden("elman_backward_after_passes", print_program(after))


def test_elman_programs_verify(elman: GradPrograms) -> None:
    verify(elman.forward)
    verify(elman.backward)


def test_elman_reverse_scan_structure(elman: GradPrograms) -> None:
    e, spec = reverse_scan(elman.backward)
    assert spec.reverse and str(spec.time) == "T:x"
    assert spec.n_spills == 1 and spec.n_sums == 2  # d s0; d Ws and d b
    # accumulators: the state's cotangent array, seeded with the (masked) output cotangent
    acc = spec.arrays[0]
    assert acc.name == "acc.s" and acc.init is not None
    seed = e.inputs[acc.init]
    (seed_eqn,) = [x for x in elman.backward.eqns if seed in x.outputs]
    assert seed_eqn.op == "mul" and {v.name for v in seed_eqn.inputs} == {"d_y", "mask.x"}
    binds = dict(zip((v.name for v in spec.body.inputs), spec.in_bind, strict=True))
    assert binds["d_s_next"] == Tap(("out", 0), 0)  # reads its own accumulator at t
    # h[t-1]'s cotangent goes into the accumulator at t-1, spilling into d s0 before the start
    stores = [(v.name, b) for v, b in zip(spec.body.outputs, spec.out_bind, strict=True)]
    spill = [(n, b) for n, b in stores if isinstance(b, Store) and b.spill is not None]
    assert spill == [("d_s_prev", Store(0, -1, True, 0))]
    n_out = len(spec.arrays) + spec.n_sums
    assert e.outputs[n_out].name == "d_z.s0"
    # loop invariants (weights) are summed over time
    sums = sorted((e.outputs[len(spec.arrays) + b.index].name, n) for n, b in stores
                  if isinstance(b, SumTo))
    assert [s for s, _ in sums] == ["d_z.Ws", "d_z.b"]
    # the hoisted input product gets a per-step cotangent array at t
    d_x = [(n, b) for n, b in stores if isinstance(b, Store) and b.spill is None]
    assert len(d_x) == 1 and d_x[0][1] == Store(1, 0, True, None)
    assert spec.arrays[1].name.startswith("d.x@") or spec.arrays[1].name.startswith("d.x")


def test_elman_reverse_body_reads_residuals(elman: GradPrograms) -> None:
    e, spec = reverse_scan(elman.backward)
    # tanh's output is not stored twice: its only use is the masked update
    # s_next = select(m, s, s_prev), so the reverse body reads it back from the state array
    assert [v.name for v in elman.residuals] == ["z.s"]
    taps = {(v.name, e.inputs[b.source[1]].name, b.offset)
            for v, b in zip(spec.body.inputs, spec.in_bind, strict=True)
            if isinstance(b, Tap) and b.source[0] == "in"}
    assert {("s", "z.s", 0), ("s_prev", "z.s", -1), ("m", "mask.x", 0)} <= taps
    consts = {e.inputs[b.index].name for b in spec.in_bind if isinstance(b, ConstRef)}
    assert "z.Ws" in consts
    # the forward program returns outputs then residuals
    fwd = elman.forward
    assert fwd.output_names[0] == "y"
    assert [n for n in fwd.output_names[1:]] == [f"residual:{v.name}" for v in elman.residuals]
    (fscan,) = [x for x in fwd.eqns if x.op == "scan"]
    assert [a.name for a in fscan.attr("scan").arrays] == ["s"]


def test_elman_gradient_order(elman: GradPrograms) -> None:
    assert [v.name for v in elman.grads_of] == ["z.Wx", "z.Ws", "z.b", "x", "z.s0"]
    assert elman.backward.output_names == tuple(f"d:{v.name}" for v in elman.grads_of)
    assert [c.name for c in elman.cotangents] == ["d_y"]
    for v, out in zip(elman.grads_of, elman.backward.outputs, strict=True):
        assert v.type == out.type


def test_backward_passes_turn_sums_into_gemms(elman: GradPrograms) -> None:
    after = elman.backward
    for _, fn in BACKWARD:
        after = fn(after, None)
    _, spec = reverse_scan(after)
    assert spec.n_sums == 0
    names = {v.name: e.op for e in after.eqns for v in e.outputs}
    assert names["d_z.Ws"] == "matmul_tn" and names["d_z.b"] == "sum_to"


DEEP = """cell c(x[I]) -> h[H] {
  state s[H]
  param W[I, H] = glorot
  param U[H, H] = orthogonal
  s = tanh(x[t-2] @ W + s[t-2] @ U)
  h = sigmoid(s + h[t-1])
}
model m(H=3, F=2) { input x: seq[F]  z = c(H) over x  output y = z }"""


def test_deeper_delays_spill_twice() -> None:
    g = grad_program(optimized(DEEP))
    verify(g.backward)
    _, spec = reverse_scan(g.backward)
    stores = sorted((b.offset, b.spill is not None) for b in spec.out_bind
                    if isinstance(b, Store) and b.accumulate)
    # s[t-2] -> acc.s[t-2], h[t-1] -> acc.h[t-1], frozen s -> acc.s[t-1], x[t-2] -> d.x[t-2]
    assert stores == [(-2, False), (-2, True), (-1, True), (-1, True)]
    assert spec.n_spills == 3


@pytest.mark.parametrize("src", [DEEP, model("gru(H)", "output hf = last(z)"),
                                 model("stack(lstm(H), 2)"), model("bidir(mgu(H))")],
                         ids=["deep", "gru_last", "stack", "bidir"])
def test_gradient_programs_verify(src: str) -> None:
    for prog in (lowered(src), optimized(src)):
        g = grad_program(prog)
        for p in (g.forward, g.backward):
            verify(p)
            for _, fn in BACKWARD:
                p = fn(p, None)
                verify(p)


def test_only_forward_scans_are_differentiated(elman: GradPrograms) -> None:
    e, _ = reverse_scan(elman.backward)
    just_scan = replace(elman.backward, outputs=e.outputs[:1], output_names=("a",))
    with pytest.raises(InternalCompilerError, match="only forward scans"):
        grad_program(just_scan)


# ---- numbers -------------------------------------------------------------------------------------
REF_BPTT = {"elman": (R.elman_bptt, {"s": "h"}), "lstm": (R.lstm_bptt, {"h": "h", "c": "c"}),
            "gru": (R.gru_bptt, {"h": "h"})}


@pytest.mark.parametrize("kind", sorted(REF_BPTT))
def test_matches_handwritten_bptt(kind: str) -> None:
    """Interpreter gradients of y and the final state against tests/reference.py, with lengths
    and random initial states."""
    bptt, states = REF_BPTT[kind]
    m = rnnlang.compile(model(f"{kind}(H)", "output hf = last(z)"), target="reference",
                        dtype="float64")
    rng = np.random.default_rng(1)
    T, B, lengths = 6, 3, np.array([6, 2, 4])
    params = R.random_params(kind, 2, 3, rng)
    m.params = {f"z.{k}": v for k, v in params.items()}
    x = rng.normal(size=(T, B, 2))
    init = {ours: rng.normal(size=(B, 3)) for ours in states}
    dy, dhf = rng.normal(size=(T, B, 3)), rng.normal(size=(B, 3))
    g = m.vjp({"x": x}, {"y": dy, "hf": dhf}, lengths=lengths,
              initial={f"z.{k}0": v for k, v in init.items()})
    want = bptt(params, x, dy, lengths=lengths, init={states[k]: v for k, v in init.items()},
                dfinal={"h": dhf})
    for k in params:
        np.testing.assert_allclose(g.params[f"z.{k}"], want[k], rtol=1e-10, atol=1e-12,
                                   err_msg=k)
    np.testing.assert_allclose(g.inputs["x"], want["xs"], rtol=1e-10, atol=1e-12)
    for ours, theirs in states.items():
        np.testing.assert_allclose(g.inputs[f"z.{ours}0"], want["init"][theirs], rtol=1e-10,
                                   atol=1e-12, err_msg=ours)


def test_deeper_delays_match_finite_differences() -> None:
    m = rnnlang.compile(DEEP, target="reference", dtype="float64")
    rng = np.random.default_rng(2)
    T, B, lengths = 5, 2, np.array([5, 3])
    m.params = {k: 0.7 * rng.normal(size=v.shape) for k, v in m.params.items()}
    x = rng.normal(size=(T, B, 2))
    init = {n: rng.normal(size=(B, 3)) for n in m.state_names}
    dy = rng.normal(size=(T, B, 3))
    g = m.vjp({"x": x}, {"y": dy}, lengths=lengths, initial=init)

    def loss() -> float:
        return float(np.sum(dy * m.forward({"x": x}, lengths=lengths, initial=init)["y"]))

    for k, arr in [*m.params.items(), ("x", x), *init.items()]:
        want = R.numeric_grad(lambda _a: loss(), arr)
        got = g.params[k] if k in g.params else g.inputs[k]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8, err_msg=k)


def test_state_delay_longer_than_the_sequence() -> None:
    src = """cell c(x[I]) -> h[H] {
  param W[I, H] = glorot
  param U[H, H] = orthogonal
  h = tanh(x @ W + h[t-4] @ U)
}
model m(H=3, F=2) { input x: seq[F]  z = c(H) over x  output y = z }"""
    m = rnnlang.compile(src, target="reference", dtype="float64")
    g = m.vjp({"x": np.ones((3, 2, 2))}, {"y": np.ones((3, 2, 3))},
              initial={"z.h0": np.ones((2, 3))})
    # h[t-4] is h0 at every step of a 3-step sequence: dU = sum_t h0^T d(pre-activation)_t
    assert np.all(np.isfinite(g.params["z.U"]))


# Per-step floats (per batch row, in units of H) BPTT keeps for each stdlib cell: the
# minimum of benchmarks/bench_memory.py, plus lstm's tanh(c) (cheaper to load than to
# recompute) and mgu's f * h[t-1] (a matmul operand: kept so that d Uh stays one GEMM after the
# loop). 1 - f and 1 - z are recomputed in the reverse body.
KEPT = {"elman(H)": 1, "mgu(H)": 4, "gru(H)": 5, "lstm(H)": 7}


@pytest.mark.parametrize("layer", sorted(KEPT))
def test_bptt_keeps_only_what_it_must(layer: str) -> None:
    g = grad_program(optimized(model(layer)))
    per_step = [v for v in g.residuals if len(v.shape) == 3]
    assert all(v.shape[-1] == g.forward.outputs[0].shape[-1] for v in per_step)
    assert len(per_step) == KEPT[layer], [v.name for v in g.residuals]
    # nothing parameter-sized either: the fused [Wf | Wh] of mgu is rebuilt in backward
    assert len(per_step) == len(g.residuals), [v.name for v in g.residuals]


def test_mgu_reverse_body_recomputes_cheap_values() -> None:
    """1 - f is rebuilt from f (stored) at the top of the reverse body; f * h[t-1] is stored
    because it is a matmul operand, so its weight gradient stays a GEMM after the loop.
    Gradients are checked against finite differences with padded batches in
    test_gradients.py."""
    g = grad_program(optimized(model("mgu(H)")))
    e, spec = reverse_scan(g.backward)
    lead = spec.body.eqns[0]
    assert lead.op == "sub" and lead.inputs[1].name == "f"  # type: ignore[union-attr]
    assert "res.mul" in {v.name for v in g.residuals}
    assert "res.sub" not in {v.name for v in g.residuals}
