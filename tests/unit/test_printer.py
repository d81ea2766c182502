"""print_program: a deterministic text form showing every part of the IR."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import numpy as np

import rnnlang
from rnnlang.interp import run_program
from rnnlang.ir.nodes import (
    Const,
    ConstRef,
    Eqn,
    InitSpec,
    InputInfo,
    OutArray,
    Param,
    Program,
    Region,
    ScanSpec,
    Store,
    SumTo,
    Tap,
    Var,
)
from rnnlang.ir.printer import print_program, print_region
from rnnlang.ir.types import BATCH, ONE, Dim, TensorType
from rnnlang.ir.verify import verify

Golden = Callable[[str, str], None]
H, IN, T = Dim.of("H"), Dim.of("I"), Dim.of("T:x")


def v(name: str, *shape: Dim) -> Var:
    return Var(name, TensorType(tuple(shape)))


def handmade() -> Program:
    """A small valid program using every binding kind, attrs, constants and a derived size."""
    x, mask, h0 = v("x", T, BATCH, IN), v("mask.x", T, BATCH, ONE), v("h0", BATCH, H)
    w, b = v("W", IN, H.scale(2)), v("b", H.scale(2))
    xw = v("x@W", T, BATCH, H.scale(2))
    a, a2, hp, bb, m = (v("a", BATCH, H.scale(2)), v("a2", BATCH, H.scale(2)),
                        v("h_prev", BATCH, H), v("bb", H.scale(2)), v("m", BATCH, ONE))
    s, s1 = v("s", BATCH, H.scale(2)), v("s1", BATCH, H.scale(2))
    lo, hi, n, c = (v(k, BATCH, H) for k in ("lo", "hi", "n", "c"))
    pre, hn, out, e = v("pre", BATCH, H), v("hn", BATCH, H), v("h_next", BATCH, H), v("e", H)
    body = Region(
        (a, a2, hp, bb, m),
        (Eqn("add", (a, a2), (s,)),
         Eqn("add", (s, bb), (s1,)),
         Eqn("slice", (s1,), (lo,), (("start", Dim()), ("stop", H))),
         Eqn("slice", (s1,), (hi,), (("start", H), ("stop", H.scale(2)))),
         Eqn("neg", (hi,), (n,)),
         Eqn("mul", (lo, Const(0.5)), (c,)),
         Eqn("add", (c, hp), (pre,)),
         Eqn("tanh", (pre,), (hn,)),
         Eqn("select", (m, hn, hp), (out,)),
         Eqn("sum_to", (n,), (e,), (("shape", (H,)),))),
        (out, n, e))
    hs, acc, total, spill = (v("h", T, BATCH, H), v("acc", T, BATCH, H), v("total", H),
                             v("d_h0", BATCH, H))
    spec = ScanSpec(T, False, 2, (OutArray("h"), OutArray("acc")), 1, 1, body,
                    (Tap(("in", 1), 0), Tap(("in", 1), -2), Tap(("out", 0), -1, 4), ConstRef(3),
                     Tap(("in", 0), 0)),
                    (Store(0), Store(1, -1, True, 0), SumTo(0)))
    y, z = v("y", T, BATCH, H), v("z", T, BATCH, H)
    eqns = (
        Eqn("matmul", (x, w), (xw,), (), None, "hoisted from the loop"),
        Eqn("scan", (mask, xw, w, b, h0), (hs, acc, total, spill), (("scan", spec),)),
        Eqn("mul", (hs, mask), (y,)),
        Eqn("sub", (Const(1e-08), y), (z,)),
    )
    return Program(
        "hand", (InputInfo(x, "seq", T), InputInfo(mask, "mask", T),
                 InputInfo(h0, "state", optional=True)),
        (Param(w, InitSpec("glorot", (1.0,))), Param(b, InitSpec("normal", (0.0, 0.5)))),
        eqns, (z, total, spill), ("y", "total", "d_h0"), (("H", 3), ("I", None)),
        (("T:c", "conv", ("T:x", 3, 2, 1)),))


def test_handmade_program_is_valid_and_runs() -> None:
    p = handmade()
    verify(p)
    rng = np.random.default_rng(0)
    f64 = np.dtype("float64")
    dims = {"H": 3, "I": 2, "B": 2, "T:x": 4}
    vals = {"x": rng.normal(size=(4, 2, 2)), "mask.x": np.ones((4, 2, 1)),
            "h0": rng.normal(size=(2, 3)), "W": rng.normal(size=(2, 6)), "b": rng.normal(size=6)}
    z, total, spill = run_program(p, vals, dims, f64)
    assert z.shape == (4, 2, 3) and total.shape == (3,) and spill.shape == (2, 3)


def test_handmade_golden(golden: Golden) -> None:
    golden("handmade", print_program(handmade()))


def test_every_binding_kind_is_shown() -> None:
    lines = [ln.strip() for ln in print_program(handmade()).splitlines()]
    expected = [
        "program hand",
        "input x: (T:x, B, I) (seq)",
        "input mask.x: (T:x, B, 1) (mask)",
        "input h0: (B, H) (state)",
        "param W: (I, 2*H) = glorot(1)",
        "param b: (2*H) = normal(0, 0.5)",
        "x@W: (T:x, B, 2*H) = matmul(x, W)",
        "h: (T:x, B, H), acc: (T:x, B, H), total: (H), d_h0: (B, H) = "
        "scan(mask.x, x@W, W, b, h0)",
        "forward over t < T:x:",
        "in  a: (B, 2*H) <- x@W[t]",  # tap
        "in  a2: (B, 2*H) <- x@W[t-2]",  # delayed tap
        "in  h_prev: (B, H) <- h[t-1] else h0",  # recurrent tap with fallback
        "in  bb: (2*H) <- b",  # loop invariant
        "lo: (B, H) = slice[start=0, stop=H](s1)",
        "hi: (B, H) = slice[start=H, stop=2*H](s1)",
        "c: (B, H) = mul(lo, 0.5)",
        "out h_next = h[t]",
        "out n += acc[t-1] (spill 0)",
        "out e += sum 0",
        "z: (T:x, B, H) = sub(1e-08, y)",
        "output y = z",
        "output d_h0 = d_h0",
    ]
    for line in expected:
        assert line in lines, line
    # lines keep the program's order: header, inputs, params, sizes, equations, outputs
    order = [lines.index(x) for x in expected if x in lines]
    assert order == sorted(order)


def test_sizes_and_constants_in_source_syntax() -> None:
    assert str(Dim.linear({"H": 2, "I": 1}, -1)) == "2*H + I - 1"
    assert str(Dim.of(4)) == "4" and str(Dim()) == "0" and str(H.scale(4)) == "4*H"
    assert str(Const(3)) == "3.0" and str(Const(-0.25)) == "-0.25"
    text = print_program(handmade())
    assert "Dim(" not in text and "TensorType(" not in text and "Var(" not in text


def test_printing_is_a_pure_function() -> None:
    p = handmade()
    text = print_program(p)
    assert print_program(p) == text
    assert print_program(copy.deepcopy(p)) == text
    # spans and comments are not part of the text
    span = next(e.span for e in rnnlang.compile(ELMAN, target="reference").program.eqns
                if e.span is not None)
    noisy = replace(p, eqns=tuple(replace(e, span=span, comment="note") for e in p.eqns))
    assert print_program(noisy) == text


def test_region_printing_matches_the_scan_body() -> None:
    p = handmade()
    body = p.eqns[1].attr("scan").body
    region = print_region(body).splitlines()
    assert len(region) == len(body.eqns)
    program_lines = [ln.strip() for ln in print_program(p).splitlines()]
    for ln in region:
        assert ln.strip() in program_lines


ELMAN = "model m(H=3, F=2) { input x: seq[F]  z = elman(H) over x  output y = z }"


def test_model_ir_goldens(golden: Golden) -> None:
    m = rnnlang.compile(ELMAN, target="reference", dtype="float64")
    assert m.emit("ir") == print_program(m.program)
    golden("elman_ir", m.emit("ir"))
    golden("elman_grad_ir", m.emit("grad-ir"))
    lstm = rnnlang.compile("model m(H=3, F=2) { input x: seq[F]  z = lstm(H) over x  "
                           "output y = last(z) }", target="reference", dtype="float64")
    golden("lstm_ir", lstm.emit("ir"))


def test_every_var_is_declared_once() -> None:
    """In the printed text each defined name appears once on a left-hand side."""
    m = rnnlang.compile("model m(H=3, F=2) { input x: seq[F]  z = bidir(gru(H)) over x  "
                        "output y = mean(z) }", target="reference", dtype="float64")
    for text in (m.emit("ir"), m.emit("grad-ir").split("\n\n")[1]):
        decls: list[str] = []
        for ln in text.splitlines():
            s = ln.strip()
            if s.startswith(("input ", "param ")):
                decls.append(s.split()[1].rstrip(":"))
            elif " = " in s and not s.startswith(("output", "out ", "in ")):
                lhs = s.split(" = ")[0]
                decls.extend(part.split(": ")[0] for part in lhs.split(", ") if ": " in part)
            elif s.startswith("in "):
                decls.append(s.split()[1].rstrip(":"))
        assert len(decls) == len(set(decls)), sorted(d for d in decls if decls.count(d) > 1)
