"""Property-based tests: random well-typed cells, compiled every way the compiler can.

A hypothesis strategy writes random `.rnn` cells (expression trees over + - * /, unary minus,
constants, @ with declared params, activations, split/concat/slices, reading the input, delayed
inputs and one or two recurrent states with delays up to 3; sometimes a second output) and wraps
each in a model `model m(H=3, F=2) { input x: seq[F]  z = gen(H) over x  output y = z }`, or a
variant with stack/bidir and last/mean/reverse/@ on the output. For every cell we check that

* it compiles, and `verify` accepts the lowered program, the program after each forward pass
  (applied one at a time) and the gradient programs (also after each pass);
* every pass preserves what the NumPy interpreter computes, on the model program and on the
  forward/backward programs of `grad_program`;
* gradients (interpreter) agree with a central difference along a random direction (smooth
  cells) and do not change when the passes are disabled;
* generated CPU code (float64) matches the reference target forward and backward, with lengths
  masking and random initial states (few examples: each one JIT-compiles a module);
* printing is deterministic: within one process and across hash seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlang
from rnnlang.api import CompileOptions, build_program
from rnnlang.autodiff.bptt import GradPrograms, grad_program
from rnnlang.interp import run_program
from rnnlang.ir.nodes import Program
from rnnlang.ir.printer import print_program
from rnnlang.ir.verify import verify
from rnnlang.passes.pipeline import BACKWARD, Pass, forward_passes
from rnnlang.runtime import bind_inputs, param_sizes, static_dims

ALL_PASSES = ("fuse_gate_matmuls", "hoist_input_projections", "dce")
H, F, B = 3, 2, 3
F64 = np.dtype("float64")

# activations safe on any real argument; "kinked" ones are not differentiable everywhere
SMOOTH_FNS = ("tanh", "sigmoid", "softsign", "elu", "gelu", "softplus", "identity", "square")
KINKED_FNS = ("relu", "abs", "hard_sigmoid")
BOUNDED_FNS = ("tanh", "sigmoid", "softsign")
CONSTS = ("0.5", "2.0", "1.5", "0.25", "3", ".75")


# ---- the cell generator ------------------------------------------------------------------------
class _CellWriter:
    """Writes one random cell; every choice is a hypothesis draw, so examples shrink."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], smooth: bool,
                 plain: bool):
        self.draw = draw
        self.smooth = smooth
        self.plain = plain  # allow an output that is not recurrent (not read as h[t-k])
        self.params: list[str] = []
        self.stmts: list[str] = []
        self.locals: dict[str, str] = {}  # name -> width ("H" or "2*H")
        self.states: dict[str, str] = {}  # recurrent states readable as S[t-k]
        self.current: dict[str, str] = {}  # states already assigned this step
        self.xw: dict[str, list[str]] = {"H": [], "2*H": []}  # input matrices, for reuse
        self.n = 0
        self.phi: str | None = None

    # small helpers
    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[self.draw(st.integers(0, len(options) - 1))]

    def chance(self) -> bool:
        return bool(self.draw(st.booleans()))

    def param(self, prefix: str, dims: str, init: str) -> str:
        name = f"{prefix}{self.n}"
        self.n += 1
        self.params.append(f"  param {name}[{dims}] = {init}")
        return name

    def fns(self) -> tuple[str, ...]:
        return SMOOTH_FNS if self.smooth else SMOOTH_FNS + KINKED_FNS

    # expressions of a given width
    def leaf(self, w: str, root: bool) -> str:
        kinds = ["xproj", "sproj"]
        if any(sw == w for sw in self.states.values()):
            kinds.append("sdirect")
        if not root:  # a bare name on the right of `=` aliases a value (see the xfail below)
            if any(cw == w for cw in self.current.values()):
                kinds.append("scur")
            if any(lw == w for lw in self.locals.values()):
                kinds.append("local")
        kind = self.pick(kinds)
        if kind == "xproj":
            # delays <= 3 with T <= 5 stay clear of the np_shift bug (see test_interp.py)
            k = self.draw(st.integers(0, 3))
            reuse = self.xw[w] and self.chance()
            wname = self.pick(self.xw[w]) if reuse else self.param("W", f"I, {w}", "glorot")
            if not reuse:
                self.xw[w].append(wname)
            return f"(x @ {wname})" if k == 0 else f"(x[t-{k}] @ {wname})"
        if kind == "sproj":
            s = self.pick(sorted(self.states))
            k = self.draw(st.integers(1, 3))
            u = self.param("U", f"{self.states[s]}, {w}", "glorot")
            return f"({s}[t-{k}] @ {u})"
        if kind == "sdirect":
            s = self.pick(sorted(n for n, sw in self.states.items() if sw == w))
            return f"{s}[t-{self.draw(st.integers(1, 3))}]"
        if kind == "scur":
            return self.pick(sorted(n for n, cw in self.current.items() if cw == w))
        return self.pick(sorted(n for n, lw in self.locals.items() if lw == w))

    def expr(self, w: str, depth: int, root: bool = False) -> str:
        if depth <= 0:
            return self.leaf(w, root)
        kinds = ["leaf", "unary", "binary", "binary", "const", "bias", "special"]
        kinds.append("slice" if w == "H" else "concat")
        kinds.append("matmul")
        if self.phi is not None:
            kinds.append("phi")
        kind = self.pick(kinds)
        d = depth - 1
        if kind == "leaf":
            return self.leaf(w, root)
        if kind == "unary":
            return f"{self.pick(self.fns())}({self.expr(w, d)})"
        if kind == "phi":
            return f"phi({self.expr(w, d)})"
        if kind == "special":  # partial functions kept on their domain
            form = self.pick(("exp(tanh({}))", "log(1 + sigmoid({}))", "sqrt(1 + square({}))",
                              "({} / (1.5 + sigmoid({})))"))
            return form.format(*(self.expr(w, d) for _ in range(form.count("{}"))))
        if kind == "binary":
            return f"({self.expr(w, d)} {self.pick(('+', '-', '*'))} {self.expr(w, d)})"
        if kind == "const":
            c, e = self.pick(CONSTS), self.expr(w, d)
            return self.pick((f"({e} * {c})", f"({c} - {e})", f"({e} + {c})", f"({e} / {c})",
                              f"(-{e})", f"({c} * {e})"))
        if kind == "bias":
            b = self.param(self.pick(("b", "g")), w, "normal(0, 0.5)")
            return self.pick((f"({self.expr(w, d)} + {b})", f"({b} * {self.expr(w, d)})"))
        if kind == "slice":
            lo, hi = self.pick((("0", "H"), ("H", "2*H"), ("", "H"), ("H", "")))
            return f"({self.expr('2*H', d)})[{lo}:{hi}]"
        if kind == "concat":
            return f"concat({self.expr('H', d)}, {self.expr('H', d)})"
        # matmul of a computed vector (not an input tap: neither fused nor hoisted)
        if self.chance():
            v = self.param("V", f"2*H, {w}", "glorot")
            return f"(concat({self.expr('H', d)}, {self.expr('H', d)}) @ {v})"
        v = self.param("V", f"H, {w}", "glorot")
        return f"(({self.expr('H', d)}) @ {v})"

    def recurrent(self, s: str, depth: int) -> str:
        """A bounded update for state `s` that reads its own past."""
        w = self.states[s]
        k = self.draw(st.integers(1, 3))
        own = f"{s}[t-{k}]"
        if self.chance():
            own = f"({own} @ {self.param('U', f'{w}, {w}', 'glorot')})"
        if self.chance():  # gated, as in GRU/MGU
            gate = f"sigmoid({self.expr(w, depth)})"
            return f"(1 - {gate}) * {s}[t-1] + {gate} * tanh({self.expr(w, depth)} + {own})"
        act = self.pick(BOUNDED_FNS if self.smooth else BOUNDED_FNS + ("hard_sigmoid",))
        return f"{act}({self.expr(w, depth)} + {own})"

    def write(self) -> str:
        depth = self.draw(st.integers(1, 3))
        use_h = self.chance() or not self.plain
        n_decl = self.draw(st.integers(0, 1) if use_h else st.integers(1, 2))
        two = self.draw(st.integers(0, 3)) == 0  # a second cell output o
        use_o = two and (self.chance() or not self.plain)
        decls: list[str] = []
        for name in ("s", "r")[:n_decl]:
            w = self.pick(("H", "2*H")) if name == "s" else "H"
            init = self.pick(("", " = learnable", " = constant(0.1)"))
            decls.append(f"  state {name}[{w}]{init}")
            self.states[name] = w
        if use_h:
            self.states["h"] = "H"
        if use_o:
            self.states["o"] = "H"
        if self.chance():
            self.phi = self.pick(self.fns())
            decls.insert(0, f"  fn phi = {self.phi}")
        for i in range(self.draw(st.integers(0, 2))):
            if self.chance():
                self.stmts.append(f"  p{i}, q{i} = split({self.expr('2*H', depth, True)}, 2)")
                self.locals[f"p{i}"] = self.locals[f"q{i}"] = "H"
            else:
                self.stmts.append(f"  v{i} = {self.expr('H', depth, True)}")
                self.locals[f"v{i}"] = "H"
        outs = ["h", "o"] if two else ["h"]
        for s in [n for n in ("s", "r") if n in self.states] + outs:
            rhs = self.recurrent(s, depth) if s in self.states else self.expr("H", depth, True)
            self.stmts.append(f"  {s} = {rhs}")
            self.current[s] = "H" if s in outs else self.states[s]
        body = "\n".join(decls + self.params + self.stmts)
        ports = ", ".join(f"{n}[H]" for n in outs)
        return f"cell gen(x[I]) -> {ports} {{\n{body}\n}}\n" + self.model(two)

    def model(self, two: bool) -> str:
        """A model applying the cell, with optional layer wrappers and output functions."""
        layer = "gen(H)" if two else self.pick(("gen(H)", "gen(H)", "gen(H)", "stack(gen(H), 2)",
                                               "bidir(gen(H))", "bidir(gen(H), merge=sum)"))
        width = "2*H" if layer == "bidir(gen(H))" else "H"
        post = self.pick(("z", "z", "last(z)", "mean(z)", "reverse(z)", "z @ Wy"))
        param = f"param Wy[{width}, 2] = glorot  " if post == "z @ Wy" else ""
        lhs = "z, w" if two else "z"
        extra = "  output y2 = w" if two else ""
        return (f"model m(H=3, F=2) {{ input x: seq[F]  {param}{lhs} = {layer} over x  "
                f"output y = {post}{extra} }}\n")


@st.composite
def cell_sources(draw: Callable[[st.SearchStrategy[Any]], Any], smooth: bool = False,
                 plain: bool = True) -> str:
    return _CellWriter(draw, smooth, plain).write()


@dataclass(frozen=True)
class Data:
    T: int
    lengths: np.ndarray
    seed: int


@st.composite
def data(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Data:
    T = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return Data(T, np.array(lengths, dtype=np.int64), draw(st.integers(0, 2**16)))


# ---- helpers -----------------------------------------------------------------------------------
def lowered(src: str) -> Program:
    opts = CompileOptions(target="reference", dtype="float64",
                          disabled_passes=frozenset(ALL_PASSES))
    raw, prog, _log, _text, _name = build_program(src, options=opts)
    assert print_program(raw) == print_program(prog)  # every pass disabled
    return raw


def bind(prog: Program, d: Data) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Random inputs, initial states and parameters for `prog`; returns (values, dims)."""
    rng = np.random.default_rng(d.seed)
    x = rng.normal(size=(d.T, B, F))
    static = static_dims(prog, {})
    probe = bind_inputs(prog, static, {"x": x}, d.lengths, None, F64)
    initial = {i.var.name: 0.5 * rng.normal(size=probe.values[i.var.name].shape)
               for i in prog.inputs if i.role == "state"}
    bound = bind_inputs(prog, static, {"x": x}, d.lengths, initial, F64)
    values = dict(bound.values)
    for name, shape in param_sizes(prog, bound.dims).items():
        values[name] = 0.5 * rng.normal(size=shape)
    return values, bound.dims


def close(a: np.ndarray, b: np.ndarray, what: str, rtol: float = 1e-9,
          atol: float = 1e-10) -> None:
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.all(np.isfinite(a)), f"{what}: not finite"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def close_lists(a: list[np.ndarray], b: list[np.ndarray], names: tuple[str, ...],
                where: str) -> None:
    assert len(a) == len(b) == len(names)
    for n, x, y in zip(names, a, b, strict=True):
        close(x, y, f"{where}: {n}")


def check_passes(prog: Program, passes: tuple[tuple[str, Pass], ...],
                 values: Mapping[str, np.ndarray], dims: Mapping[str, int], what: str) -> Program:
    """Apply `passes` one at a time: verify each result and compare interpreter outputs."""
    verify(prog)
    want = run_program(prog, values, dims, F64)
    for name, fn in passes:
        prog = fn(prog, None)
        verify(prog)
        got = run_program(prog, values, dims, F64)
        close_lists(got, want, prog.output_names, f"{what} after {name}")
    return prog


def grad_values(g: GradPrograms, values: Mapping[str, np.ndarray], dims: Mapping[str, int],
                cot_seed: int) -> dict[str, np.ndarray]:
    """Values for `g.backward`: primal values, residuals from `g.forward`, random cotangents."""
    outs = run_program(g.forward, values, dims, F64)
    n = len(g.forward.outputs) - len(g.residuals)
    vals = dict(values)
    vals.update({r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)})
    rng = np.random.default_rng(cot_seed)
    vals.update({c.name: rng.normal(size=o.shape) for c, o in
                 zip(g.cotangents, outs[:n], strict=True)})
    return vals


def random_like(outs: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A random cotangent for every output."""
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=v.shape) for k, v in outs.items()}


def all_passes() -> tuple[tuple[str, Pass], ...]:
    return forward_passes() + BACKWARD


# ---- properties: interpreter only (many examples) ------------------------------------------------
@settings(max_examples=60)
@given(src=cell_sources(), d=data())
def test_passes_verify_and_preserve_semantics(src: str, d: Data) -> None:
    raw = lowered(src)
    values, dims = bind(raw, d)
    opt = check_passes(raw, forward_passes(), values, dims, "model program")
    # gradient programs of the lowered and of the optimized program
    grads = []
    for prog in (raw, opt):
        g = grad_program(prog)
        verify(g.forward)
        verify(g.backward)
        bvals = grad_values(g, values, dims, d.seed + 1)
        check_passes(g.forward, all_passes(), values, dims, "grad forward")
        grads.append(run_program(g.backward, bvals, dims, F64))
        after = check_passes(g.backward, all_passes(), bvals, dims, "grad backward")
        assert [v.name for v in after.outputs] and len(after.outputs) == len(g.grads_of)
    # passes commute with differentiation
    close_lists(grads[1], grads[0], tuple(v.name for v in grad_program(raw).grads_of),
                "gradients of optimized vs lowered program")


@settings(max_examples=30)
@given(src=cell_sources(smooth=True), d=data())
def test_gradients_match_central_differences(src: str, d: Data) -> None:
    m = rnnlang.compile(src, target="reference", dtype="float64", verify_ir=True)
    values, _dims = bind(m.program, d)
    m.params = {p.var.name: values[p.var.name] for p in m.program.params}
    x = values["x"]
    states = {n: values[n] for n in m.state_names}
    rng = np.random.default_rng(d.seed + 7)
    cots = random_like(m.forward({"x": x}, lengths=d.lengths, initial=states), d.seed + 5)
    g = m.vjp({"x": x}, cots, lengths=d.lengths, initial=states)
    assert set(g.params) == set(m.params) and set(g.inputs) == {"x", *states}
    # directional derivative along a random direction in (params, x, initial states)
    dirs = {k: rng.normal(size=v.shape) for k, v in {**m.params, "x": x, **states}.items()}
    base = {k: v.copy() for k, v in m.params.items()}
    eps = 1e-6

    def f(sign: float) -> float:
        m.params = {k: v + sign * eps * dirs[k] for k, v in base.items()}
        xs = x + sign * eps * dirs["x"]
        ini = {k: v + sign * eps * dirs[k] for k, v in states.items()}
        outs = m.forward({"x": xs}, lengths=d.lengths, initial=ini)
        return sum(float(np.sum(cots[k] * v)) for k, v in outs.items())

    numeric = (f(1.0) - f(-1.0)) / (2 * eps)
    m.params = base
    analytic = sum(float(np.sum(g.params[k] * dirs[k])) for k in base) + sum(
        float(np.sum(g.inputs[k] * dirs[k])) for k in g.inputs)
    assert np.isfinite(analytic)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)


@settings(max_examples=20)
@given(src=cell_sources(), d=data())
def test_passes_do_not_change_model_gradients(src: str, d: Data) -> None:
    """Through the public API: -O0 and the full pipeline give the same outputs and gradients."""
    m0 = rnnlang.compile(src, target="reference", dtype="float64", disable_passes=ALL_PASSES)
    m1 = rnnlang.compile(src, target="reference", dtype="float64", verify_ir=True)
    values, _ = bind(m0.program, d)
    params = {p.var.name: values[p.var.name] for p in m0.program.params}
    states = {n: values[n] for n in m0.state_names}
    m0.params, m1.params = dict(params), dict(params)
    cots = random_like(m0.forward({"x": values["x"]}, lengths=d.lengths, initial=states), d.seed)
    g0 = m0.vjp({"x": values["x"]}, cots, lengths=d.lengths, initial=states)
    g1 = m1.vjp({"x": values["x"]}, cots, lengths=d.lengths, initial=states)
    for k in cots:
        close(g1.outputs[k], g0.outputs[k], k)
    for k in g0.params:
        close(g1.params[k], g0.params[k], f"d {k}")
    for k in g0.inputs:
        close(g1.inputs[k], g0.inputs[k], f"d {k}")


@settings(max_examples=15)
@given(src=cell_sources())
def test_printing_is_deterministic(src: str, cache_dir: Path) -> None:
    a = rnnlang.compile(src, target="reference", dtype="float64")
    b = rnnlang.compile(src, target="reference", dtype="float64")
    assert print_program(a.raw_program) == print_program(b.raw_program)
    assert a.emit("ir") == b.emit("ir")
    assert a.emit("grad-ir") == b.emit("grad-ir")
    # printing does not depend on object identity: a rebuilt program prints the same
    assert print_program(lowered(src)) == print_program(a.raw_program)


@settings(max_examples=6)
@given(src=cell_sources())
def test_generated_python_is_deterministic(src: str, cache_dir: Path) -> None:
    """Two compiles give byte-identical generated modules (emitting does not JIT-compile)."""
    a = rnnlang.compile(src, target="cpu", dtype="float64", cache_dir=cache_dir)
    b = rnnlang.compile(src, target="cpu", dtype="float64", cache_dir=cache_dir)
    pa, pb = a.emit("python"), b.emit("python")
    assert pa == pb
    compile(pa, "<generated>", "exec")  # it is Python


# ---- property: generated CPU code against the interpreter (few examples: each JIT-compiles) --
@settings(max_examples=4)
@given(src=cell_sources(), d=data())
def test_cpu_matches_reference(src: str, d: Data, cache_dir: Path) -> None:
    cpu = rnnlang.compile(src, target="cpu", dtype="float64", cache_dir=cache_dir)
    ref = rnnlang.compile(src, target="reference", dtype="float64")
    values, _ = bind(ref.program, d)
    params = {p.var.name: values[p.var.name] for p in ref.program.params}
    cpu.params, ref.params = dict(params), dict(params)
    states = {n: values[n] for n in ref.state_names}
    x = values["x"]
    fc = cpu.forward({"x": x}, lengths=d.lengths, initial=states)
    fr = ref.forward({"x": x}, lengths=d.lengths, initial=states)
    assert set(fc) == set(fr) == set(cpu.output_names)
    pad = np.arange(d.T)[:, None] >= d.lengths[None, :]
    for k in fr:
        close(fc[k], fr[k], f"forward {k}")
        if fc[k].ndim == 3:
            assert np.all(fc[k][pad] == 0.0), f"{k}: outputs at padded steps must be zero"
    cots = random_like(fr, d.seed + 3)
    gc = cpu.vjp({"x": x}, cots, lengths=d.lengths, initial=states)
    gr = ref.vjp({"x": x}, cots, lengths=d.lengths, initial=states)
    for k in fr:
        close(gc.outputs[k], gr.outputs[k], f"vjp output {k}")
    assert set(gc.params) == set(gr.params) == set(params)
    for k in gr.params:
        close(gc.params[k], gr.params[k], f"d {k}")
    assert set(gc.inputs) == set(gr.inputs)
    for k in gr.inputs:
        close(gc.inputs[k], gr.inputs[k], f"d {k}")


CONCAT_OF_SLICES = """
cell gen(x[I]) -> s[H] {
  param W[I, H] = glorot
  param U5[H, H] = glorot
  param U6[H, H] = glorot
  param V4[2*H, H] = glorot
  s = tanh(x @ W + concat(s[t-1] @ U5, s[t-1] @ U6) @ V4)
}
model m(H=3, F=2) { input x: seq[F]  z = gen(H) over x  output y = z }
"""


def test_cpu_concat_of_fused_slices(cache_dir: Path) -> None:
    """Found by test_cpu_matches_reference: gate fusion turns the two products into one
    (s[t-1] @ [U5 | U6]) and the concat's inputs into slices of it; the CPU loop took the
    concat for one whose parts had been written in place and never filled its buffer
    (np.empty: garbage, a different result each run)."""
    cpu = rnnlang.compile(CONCAT_OF_SLICES, target="cpu", dtype="float64", cache_dir=cache_dir)
    ref = rnnlang.compile(CONCAT_OF_SLICES, target="reference", dtype="float64")
    assert "fuse_gate_matmuls" in ref.pass_log.applied
    d = Data(4, np.array([4, 2, 3]), 7)
    values, _ = bind(ref.program, d)
    params = {p.var.name: values[p.var.name] for p in ref.program.params}
    cpu.params, ref.params = dict(params), dict(params)
    states = {n: values[n] for n in ref.state_names}
    fr = ref.forward({"x": values["x"]}, lengths=d.lengths, initial=states)["y"]
    for _ in range(3):
        fc = cpu.forward({"x": values["x"]}, lengths=d.lengths, initial=states)["y"]
        close(fc, fr, "forward y")


# ---- fixed cells: the generator's corners, and determinism across processes ------------------------
FIXED = {
    "delays": """
cell gen(x[I]) -> h[H] {
  state s[2*H] = learnable
  param W0[I, 2*H] = glorot
  param W1[I, H] = glorot
  param U0[2*H, H] = glorot
  p, q = split(x @ W0 + x[t-2] @ W0, 2)
  s = tanh(concat(p, q * h[t-2]) + s[t-2])
  h = sigmoid(s[0:H] - x[t-1] @ W1 + s[t-1] @ U0) * (q / (1.5 + sigmoid(p)))
}
model m(H=3, F=2) { input x: seq[F]  z = gen(H) over x  output y = z }
""",
    "partial_fns": """
cell gen(x[I]) -> h[H] {
  fn phi = elu
  param W0[I, H] = glorot
  param W1[I, H] = glorot
  v = log(1 + sigmoid(x @ W0)) + sqrt(1 + square(h[t-1])) - exp(tanh(x @ W1))
  h = softsign(phi(v) / 2.0 - h[t-1] * 0.5)
}
model m(H=3, F=2) { input x: seq[F]  z = gen(H) over x  output y = z }
""",
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_cells(name: str, cache_dir: Path) -> None:
    src = FIXED[name]
    d = Data(5, np.array([5, 2, 4]), 11)
    raw = lowered(src)
    values, dims = bind(raw, d)
    opt = check_passes(raw, forward_passes(), values, dims, name)
    g = grad_program(opt)
    check_passes(g.backward, all_passes(), grad_values(g, values, dims, 1), dims, name)


_DUMP = textwrap.dedent("""
    import sys, rnnlang
    from rnnlang.ir.printer import print_program
    srcs = sys.stdin.read().split("\\0")
    for s in srcs:
        m = rnnlang.compile(s, target="cpu", dtype="float64", cache_dir=sys.argv[1])
        print(print_program(m.raw_program), m.emit("ir"), m.emit("grad-ir"), m.emit("python"))
""")


def test_printing_is_deterministic_across_hash_seeds(tmp_path: Path) -> None:
    """Names, orderings and emitted code must not depend on set/dict hash order."""
    srcs = [*FIXED.values(), "model m(H=3, F=2) { input x: seq[F]  z = mgu(H) over x  "
            "output y = z }", "model m(H=3, F=2) { input x: seq[F]  z = bidir(lstm(H)) over x "
            " output y = last(z) }"]
    outs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", _DUMP, str(tmp_path / "cache")],
                           input="\0".join(srcs), capture_output=True, text=True, env=env,
                           timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert outs[0].count("program m") >= 3 * len(srcs)


# ---- regressions found by this file -----------------------------------------------------------------
@pytest.mark.parametrize("src", [
    """cell c(x[I]) -> h[H] { param W[I, H] = glorot
         a = tanh(x @ W)
         c = a * 2.0
         d = a
         h = d + c }
       model m(H=3, F=2) { input x: seq[F]  z = c(H) over x  output y = z }""",
    "model m(H=3, F=2) { input x: seq[F]  z = elman(H) over x  output y = z  output y2 = z * 2.0 }",
], ids=["cell_alias", "model_output_alias"])
def test_alias_assignment_compiles(src: str) -> None:
    """`d = a` in a cell, or `output y = z` with z used elsewhere, once renamed the defining
    equation and left the other uses undefined."""
    m = rnnlang.compile(src, target="reference", dtype="float64", verify_ir=True)
    verify(m.raw_program)
    out = m.forward({"x": np.ones((2, 1, 2))})
    assert all(v.shape[:2] == (2, 1) for v in out.values())


PLAIN_OUTPUT = """
cell gen(x[I]) -> h[H] {
  state c[H]
  param W[I, H] = glorot
  c = tanh(x @ W + c[t-1])
  h = 2.0 * c
}
model m(H=3, F=2) { input x: seq[F]  z = gen(H) over x  output y = z }
"""


def test_interp_runs_bptt_of_plain_output() -> None:
    """BPTT gives a non-recurrent output an accumulator array that no Store writes; the
    interpreter once sized arrays from their first Store (IndexError)."""
    m = rnnlang.compile(PLAIN_OUTPUT, target="reference", dtype="float64")
    x = np.random.default_rng(0).normal(size=(4, 2, 2))
    g = m.vjp({"x": x}, {"y": np.ones((4, 2, 3))})
    # y = 2 c and c_t = tanh(x_t W + c_{t-1}): check dW against a hand-written loop
    w = m.params["z.W"]
    c, cs = np.zeros((2, 3)), []
    for t in range(4):
        c = np.tanh(x[t] @ w + c)
        cs.append(c)
    dw, dc = np.zeros_like(w), np.zeros((2, 3))
    for t in reversed(range(4)):
        dc = dc + 2.0
        da = dc * (1 - cs[t] ** 2)
        dw += x[t].T @ da
        dc = da
    np.testing.assert_allclose(g.params["z.W"], dw, rtol=1e-12)
