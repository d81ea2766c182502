"""verify: accepts what the compiler produces, rejects hand-broken programs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

import rnnlang
from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import grad_program
from rnnlang.diagnostics import InternalCompilerError
from rnnlang.ir.nodes import (
    ConstRef,
    Eqn,
    InputInfo,
    Program,
    Region,
    ScanSpec,
    Store,
    SumTo,
    Tap,
    Var,
)
from rnnlang.ir.types import BATCH, Dim, TensorType
from rnnlang.ir.verify import verify
from rnnlang.passes.pipeline import BACKWARD, forward_passes

ALL_PASSES = frozenset({"fuse_gate_matmuls", "hoist_input_projections", "dce"})
H = Dim.of("H")
T = Dim.of("T:x")


def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64", disabled_passes=ALL_PASSES)
    return build_program(src, options=opts)[0]


def m(body: str, dims: str = "H=3, F=2") -> str:
    return f"model m({dims}) {{ input x: seq[F]  {body} }}"


# ---- everything the compiler produces verifies ---------------------------------------------------
MODELS = {
    **{c: m(f"z = {c}(H) over x  output y = z") for c in
       ("elman", "lstm", "gru", "peephole_lstm", "indrnn", "mgu")},
    "elman_relu": m("z = elman(H, phi=relu) over x  output y = z"),
    "jordan": m("z = jordan(O, H) over x  output y = z", "H=3, F=2, O=2"),
    "bidir_concat": m("z = bidir(gru(H)) over x  output y = z"),
    "bidir_sum_mean": m("z = bidir(lstm(H), merge=sum) over x  output y = mean(z)"),
    "stack_last": m("z = stack(lstm(H), 2) over x  output y = last(z)"),
    "seq2seq": m("input u: seq[F]  enc = lstm(H) over x  dec = lstm(H) over u from enc  "
                 "output y = dec"),
    "repeat_reverse": m("input v: vec[F]  r = repeat(v, x)  z = elman(H) over concat(x, r)  "
                        "output y = reverse(z)"),
    "repeat_n": "model m(H=3, F=2) { input v: vec[F]  z = elman(H) over repeat(v, 4)  "
                "output y = z }",
    "conv_strided": m("c = conv1d(x, channels=4, kernel=3, stride=2, padding=1)  "
                      "z = elman(H) over c  output y = z"),
    "dense": m("d = dense(x, 5, act=relu)  z = gru(H) over d  output y = z"),
    "model_params": m("param Wy[H, O] = glorot  param by[O] = zeros  z = mgu(H) over x  "
                      "output y = z @ Wy + by  output s = last(z)", "H=3, F=2, O=4"),
}


@pytest.mark.parametrize("src", MODELS.values(), ids=MODELS.keys())
def test_compiler_output_verifies(src: str) -> None:
    """Lowered program, each forward pass, and gradient programs before and after each
    backward pass."""
    rnnlang.compile(src, target="reference", dtype="float64", verify_ir=True)
    prog = lowered(src)
    verify(prog)
    for _, fn in forward_passes():
        prog = fn(prog, None)
        verify(prog)
    g = grad_program(prog)
    for p in (g.forward, g.backward):
        verify(p)
        for _, fn in BACKWARD:
            verify(fn(p, None))


# ---- hand-broken programs --------------------------------------------------------------------------
ELMAN = MODELS["elman"]


@pytest.fixture(scope="module")
def prog() -> Program:
    p = lowered(ELMAN)
    assert [e.op for e in p.eqns] == ["scan", "mul", "last"]
    return p


def broken(match: str, p: Program) -> None:
    with pytest.raises(InternalCompilerError, match=f"IR verification failed: .*{match}"):
        verify(p)


def with_scan(p: Program, **changes: object) -> Program:
    """`p` with its scan's spec changed (``body=``, ``in_bind=`` ...) or the eqn itself."""
    scan = p.eqns[0]
    eqn_fields = {k: v for k, v in changes.items() if k in ("inputs", "outputs")}
    spec_fields = {k: v for k, v in changes.items() if k not in eqn_fields}
    spec = replace(scan.attr("scan"), **spec_fields)
    return replace(p, eqns=(replace(scan, attrs=(("scan", spec),), **eqn_fields),) + p.eqns[1:])


def body_of(p: Program) -> Region:
    return p.eqns[0].attr("scan").body


def test_the_fixture_verifies(prog: Program) -> None:
    verify(prog)


def test_use_before_def_top_level(prog: Program) -> None:
    scan, mul, last = prog.eqns
    broken("z.s used by mul before it is defined", replace(prog, eqns=(mul, scan, last)))


def test_use_before_def_in_body(prog: Program) -> None:
    body = body_of(prog)
    eqns = body.eqns[1:2] + body.eqns[:1] + body.eqns[2:]  # v_Ws moved first: fine
    verify(with_scan(prog, body=replace(body, eqns=eqns)))
    adds = [i for i, e in enumerate(body.eqns) if e.op == "add"]
    a, b = adds[0], adds[1]
    eqns = list(body.eqns)
    eqns[a], eqns[b] = eqns[b], eqns[a]
    broken("scan body .* used by add before it is defined",
           with_scan(prog, body=replace(body, eqns=tuple(eqns))))


def test_outer_value_used_in_body(prog: Program) -> None:
    """Bodies see the outer scope only through their bindings."""
    body = body_of(prog)
    e = body.eqns[0]
    outer_w = prog.params[0].var  # z.Wx itself, not the body input bound to it
    assert outer_w.name == "z.Wx"
    bad = replace(e, inputs=(e.inputs[0], outer_w))
    broken("z.Wx used by matmul before it is defined",
           with_scan(prog, body=replace(body, eqns=(bad,) + body.eqns[1:])))


def test_undefined_output(prog: Program) -> None:
    ghost = Var("ghost", prog.outputs[0].type)
    broken("output ghost is not defined", replace(prog, outputs=(ghost,)))


def test_double_definition_top_level(prog: Program) -> None:
    scan, mul, last = prog.eqns
    broken(f"{mul.outputs[0].name} defined twice", replace(prog, eqns=(scan, mul, mul, last)))
    clash = replace(mul, outputs=(Var("x", mul.outputs[0].type),))  # redefines an input
    broken("x defined twice", replace(prog, eqns=(scan, clash, last),
                                      outputs=clash.outputs))


def test_double_definition_in_body(prog: Program) -> None:
    body = body_of(prog)
    dup = body.eqns[:3] + body.eqns[2:]
    broken("defined twice", with_scan(prog, body=replace(body, eqns=dup)))


def test_input_declared_twice(prog: Program) -> None:
    broken("x declared twice", replace(prog, inputs=prog.inputs + prog.inputs[:1]))
    p = prog.params[0]
    broken("z.Wx declared twice", replace(prog, inputs=prog.inputs + (InputInfo(p.var, "vec"),)))


def test_declared_shape_mismatch(prog: Program) -> None:
    scan, mul, last = prog.eqns
    wrong = Var("y", TensorType((T, BATCH, H.scale(2))))
    broken("mul produces .* declared", replace(prog, eqns=(scan, replace(mul, outputs=(wrong,)),
                                                           last), outputs=(wrong,)))


def test_operand_shape_mismatch(prog: Program) -> None:
    """matmul of (B, F) by (H, H): the op's shape rule refuses."""
    body = body_of(prog)
    mm = body.eqns[0]
    assert mm.op == "matmul"
    ws = body.eqns[1].inputs[1]
    bad = replace(mm, inputs=(mm.inputs[0], ws))
    broken("matmul: cannot multiply", with_scan(prog, body=replace(body, eqns=(bad,) +
                                                                   body.eqns[1:])))


def test_use_with_another_type(prog: Program) -> None:
    scan, mul, last = prog.eqns
    z = mul.inputs[0]
    alias = Var(z.name, TensorType((T, BATCH, H.scale(2))))
    broken("z.s used with type", replace(prog, eqns=(scan, replace(mul, inputs=(alias,) +
                                                                    mul.inputs[1:]), last)))


def test_unknown_op(prog: Program) -> None:
    scan, mul, last = prog.eqns
    broken("unknown op frobnicate", replace(prog, eqns=(scan, replace(mul, op="frobnicate"),
                                                        last)))


# ---- scan wiring ---------------------------------------------------------------------------------
def test_scan_output_count(prog: Program) -> None:
    scan = prog.eqns[0]
    broken("scan declares 1 outputs, eqn has 2",
           with_scan(prog, outputs=scan.outputs + (Var("extra", scan.outputs[0].type),)))


def test_scan_binding_count(prog: Program) -> None:
    spec: ScanSpec = prog.eqns[0].attr("scan")
    broken("bindings do not match", with_scan(prog, in_bind=spec.in_bind[:-1]))
    broken("bindings do not match", with_scan(prog, out_bind=spec.out_bind + (Store(0),)))


def test_tap_of_non_sequence(prog: Program) -> None:
    spec: ScanSpec = prog.eqns[0].attr("scan")
    k = next(i for i, b in enumerate(spec.in_bind) if isinstance(b, Tap) and b.source[0] == "in")
    binds = list(spec.in_bind)
    binds[k] = Tap(("in", spec.n_seq), 0)  # a loop invariant, not a sequence
    broken("reads a non-sequence input", with_scan(prog, in_bind=tuple(binds)))


def test_tap_shape(prog: Program) -> None:
    spec: ScanSpec = prog.eqns[0].attr("scan")
    binds = list(spec.in_bind)
    x_tap = next(i for i, b in enumerate(binds) if b == Tap(("in", 0), 0))
    mask_tap = next(i for i, b in enumerate(binds) if b == Tap(("in", 1), 0))
    binds[x_tap], binds[mask_tap] = binds[mask_tap], binds[x_tap]
    broken("cannot give", with_scan(prog, in_bind=tuple(binds)))
    broken("cannot give", with_scan(prog, time=Dim.of(7)))  # arrays run over T:x


def test_const_binding_shape(prog: Program) -> None:
    spec: ScanSpec = prog.eqns[0].attr("scan")
    binds = list(spec.in_bind)
    consts = [i for i, b in enumerate(binds) if isinstance(b, ConstRef)]
    binds[consts[0]], binds[consts[1]] = binds[consts[1]], binds[consts[0]]  # Wx <-> Ws
    broken("bound to a value of another shape", with_scan(prog, in_bind=tuple(binds)))


def test_body_output_undefined(prog: Program) -> None:
    body = body_of(prog)
    ghost = Var("ghost", body.outputs[0].type)
    broken("body output ghost is not defined", with_scan(prog, body=replace(body,
                                                                             outputs=(ghost,))))


def test_store_and_sum_shapes(prog: Program) -> None:
    body = body_of(prog)
    wx = next(v for v in body.inputs if v.shape == (Dim.of("F"), H))
    broken("store of .* shape mismatch", with_scan(prog, body=replace(body, outputs=(wx,))))
    # the body's (B, H) value summed over time into an (H) output
    scan = prog.eqns[0]
    broken("sum of s_next: shape mismatch",
           with_scan(prog, n_sums=1, out_bind=(SumTo(0),),
                     outputs=scan.outputs + (Var("total", TensorType((H,))),)))


# ---- arity, slice bounds, scan indices, readable messages ------------------------------------------
@pytest.mark.parametrize("op, extra", [("add", 1), ("tanh", 1)])
def test_arity_is_checked(prog: Program, op: str, extra: int) -> None:
    scan, mul, last = prog.eqns
    bad = replace(mul, op=op, inputs=mul.inputs + mul.inputs[1:1 + extra])
    broken("", replace(prog, eqns=(scan, bad, last)))


def test_slice_bounds_are_checked(prog: Program) -> None:
    scan, mul, last = prog.eqns
    y = mul.outputs[0]
    bad = Eqn("slice", (y,), (Var("s", TensorType((T, BATCH, H.scale(2)))),),
              (("start", Dim()), ("stop", H.scale(2))))
    broken("slice", replace(prog, eqns=(scan, mul, bad, last)))


def _scan_index_cases() -> list[object]:
    def fallback_oob(s: ScanSpec) -> dict[str, object]:
        return {"in_bind": tuple(replace(b, fallback=99) if isinstance(b, Tap) and
                                 b.fallback is not None else b for b in s.in_bind)}

    def fallback_shape(s: ScanSpec) -> dict[str, object]:  # fallback to z.Wx (F, H)
        return {"in_bind": tuple(replace(b, fallback=2) if isinstance(b, Tap) and
                                 b.fallback is not None else b for b in s.in_bind)}

    def tap_out_oob(s: ScanSpec) -> dict[str, object]:
        return {"in_bind": tuple(replace(b, source=("out", 5)) if isinstance(b, Tap) and
                                 b.source[0] == "out" else b for b in s.in_bind)}

    def const_oob(s: ScanSpec) -> dict[str, object]:
        return {"in_bind": tuple(ConstRef(42) if isinstance(b, ConstRef) else b
                                 for b in s.in_bind)}

    def store_oob(s: ScanSpec) -> dict[str, object]:
        return {"out_bind": (Store(3),)}

    def n_seq(s: ScanSpec) -> dict[str, object]:
        return {"n_seq": 7}

    cases = [fallback_oob, fallback_shape, tap_out_oob, const_oob, store_oob, n_seq]
    return [pytest.param(c, id=c.__name__) for c in cases]


@pytest.mark.parametrize("change", _scan_index_cases())
def test_scan_indices_are_checked(prog: Program, change: Callable[[ScanSpec], dict[str, object]],
                                  ) -> None:
    broken("", with_scan(prog, **change(prog.eqns[0].attr("scan"))))


def test_messages_show_shapes_readably(prog: Program) -> None:
    with pytest.raises(InternalCompilerError) as info:
        verify(with_scan(prog, time=Dim.of(7)))
    assert "Dim(" not in str(info.value) and "(T:x, B, F)" in str(info.value)
