"""Time loops outlined into shared functions (`rnnlang.codegen.outline`): one compiled loop
per distinct loop, whatever the number of identical layers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang.codegen.outline import Outlined, outline_loop
from rnnlang.codegen.writer import CodeWriter

STACK = """
model m(H = 5, F = 3) {
  input x: seq[F]
  h = stack(gru(H), 3) over x
  output y = h
}
"""


def _assert_reference_gradients(m: rnnlang.Model, seed: int) -> None:
    """The compiled STACK model's parameter gradients equal the reference interpreter's."""
    ref = rnnlang.compile(STACK, target="reference", dtype="float64")
    ref.params = {k: v.copy() for k, v in m.params.items()}
    x = np.random.default_rng(seed).normal(size=(4, 2, 3))
    cot = {"y": np.ones((4, 2, 5))}
    a, b = m.vjp({"x": x}, cot), ref.vjp({"x": x}, cot)
    for k in b.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)


def test_identical_layers_share_one_loop(cache_dir: Path) -> None:
    m = rnnlang.compile(STACK, cache_dir=cache_dir, dtype="float64")
    src = m._executor().source
    time_loops = [name for name in re.findall(r"^def (_loop_\d+)\(", src, re.M)
                  if "for t in" in src.split(f"def {name}(")[1].split("\ndef ")[0]]
    assert len(time_loops) == 3  # forward, forward_train, backward: one loop each
    for fn in ("forward", "forward_train", "backward"):
        body = src.split(f"\ndef {fn}(")[1].split("\ndef ")[0]
        calls = [c for c in re.findall(r"^\s+(_loop_\d+)\(", body, re.M) if c in time_loops]
        assert len(calls) == 3 and len(set(calls)) == 1, (fn, calls)
        assert "for " not in body  # every loop lives in a shared jitted function
        assert f"@njit(cache=True, nogil=True, fastmath=kernels.FASTMATH, error_model=\"numpy\")" \
            f"\ndef {fn}(" not in src  # so the function itself is plain Python
    _assert_reference_gradients(m, seed=0)


def _writer(text: str) -> CodeWriter:
    w = CodeWriter()
    w.line("def f(a, n):")
    w.depth = 1
    w.lines.extend("    " + line for line in text.strip("\n").splitlines())
    return w


def test_loops_reading_outer_values_of_their_own_names_stay_inline() -> None:
    out = Outlined("@njit")
    w = _writer("for t in range(n):\n    s = s + a[t]\n")
    assert not outline_loop(w, 1, "loop", out) and not out.functions
    w = _writer("for t in range(n):\n    s += a[t]\n")
    assert not outline_loop(w, 1, "loop", out)
    w = _writer("for t in range(n):\n    s = a[t]\n    a[t] = s * K_2_0\n")
    assert outline_loop(w, 1, "loop", out)
    assert w.lines[-1] == "    _loop_0(n, a)"  # K_2_0 is a module constant: not a parameter
    w2 = _writer("for t in range(n):\n    u = a[t]\n    a[t] = u * K_2_0\n")
    assert outline_loop(w2, 1, "loop", out) and len(out.functions) == 1  # same up to names
    w3 = _writer("for t in range(n):\n    u = a[t]\n    a[t] = u * K_3_0\n")
    assert outline_loop(w3, 1, "loop", out) and len(out.functions) == 2


def test_functions_whose_loops_stay_inline_are_jitted_whole(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a loop cannot be outlined (simulated: outlining refused for pointwise loops), the
    top-level function keeps its loops and is compiled as a whole, and computes the same."""
    import rnnlang.codegen.cpu as cpu

    real = cpu.outline_loop
    monkeypatch.setattr(cpu, "outline_loop", lambda w, start, title, out: (
        False if title.startswith("pointwise") else real(w, start, title, out)))
    m = rnnlang.compile(STACK, cache_dir=cache_dir, dtype="float64")
    src = m._executor().source
    for fn in ("forward", "forward_train", "backward"):
        head = src.split(f"\ndef {fn}(")[0].rstrip().splitlines()[-1]
        assert head.startswith("@njit("), (fn, head)
    _assert_reference_gradients(m, seed=1)


def test_sequence_sized_results_are_allocated_in_python(cache_dir: Path) -> None:
    """Whole-sequence products and shifts write into arrays the Python-level code allocates,
    from NumPy (results handed back) or the workspace (huge pages or reuse: Numba's allocator
    cost 12,800 page faults for one (6400, 2048) float32 product), so no kernel call returns
    a fresh sequence."""
    src = rnnlang.compile(STACK, cache_dir=cache_dir, dtype="float32")._executor().source
    top = "".join(src.split(f"\ndef {fn}(")[1].split("\ndef ")[0]
                  for fn in ("forward", "forward_train", "backward"))
    calls = re.findall(r"^( +)(\w+ = )?kernels\.(mm3\w*|shift\w*)\((.*)\)$", top, re.M)
    assert {c[2] for c in calls} >= {"mm3", "mm3_nt", "mm3_tn", "shift"}
    sources = set()
    for _indent, assigned, name, args in calls:
        assert not assigned, name
        out = args.rsplit(", ", 1)[1]
        found = re.search(rf"^ +{out} = (np|ws)\.(empty|zeros)\((\d+, )?\(.*\), DTYPE\)\n"
                          rf" +kernels\.{name}\(", top, re.M)
        assert found, (name, out)
        sources.add(found.group(1))
    assert sources == {"np", "ws"}  # weight gradients are handed back, the input projection not


def test_per_step_buffers_are_allocated_inside_the_outlined_loops(cache_dir: Path) -> None:
    """A step's buffers (gate products, cotangents of one step) are made by the jitted loop
    function, not passed in by the Python-level code: each workspace call and argument cost
    the Python side about 1.3 us, a tenth of a small model's call."""
    m = rnnlang.compile(STACK, cache_dir=cache_dir, dtype="float64")
    src = m._executor().source
    loops = {name: src.split(f"def {name}(")[1].split("\ndef ")[0]
             for name in re.findall(r"^def (_loop_\d+)\(", src, re.M)}
    time_loops = {n: body for n, body in loops.items() if "for t in" in body}
    assert len(time_loops) == 3
    for name, body in time_loops.items():
        head = body.split("for t in")[0]
        assert re.search(r"^ +\w+ = np\.empty\(\(n_B, [\w *]+\), DTYPE\)$", head, re.M), name
    for fn in ("forward", "forward_train", "backward"):
        top = src.split(f"\ndef {fn}(")[1].split("\ndef ")[0]
        assert not re.search(r"ws\.(empty|zeros)\(\d+, \(n_B,", top), fn
    _assert_reference_gradients(m, seed=2)


def test_outlining_takes_leading_allocations_along() -> None:
    out = Outlined("@njit")
    w = _writer("buf = np.empty((n,), DTYPE)\nfor t in range(n):\n    buf[t] = a[t]\n"
                "    a[t] = buf[t] * K_2_0\n")
    assert outline_loop(w, 1, "loop", out)
    assert w.lines[-1] == "    _loop_0(n, a)"
    body = out.functions[next(iter(out.functions))][1]
    assert any(line.strip() == "buf = np.empty((n,), DTYPE)" for line in body)
    w = _writer("buf = np.empty((n,), DTYPE)\nprint(buf)\nfor t in range(n):\n    a[t] = buf[t]\n")
    assert not outline_loop(w, 1, "loop", out)  # only assignments may come before the loop


def test_bptt_packs_or_transposes_recurrent_weights_once_before_the_loop(
        cache_dir: Path) -> None:
    """d @ U^T inside the reverse loop reads U^T packed before the loop for the packed-weight
    kernel (`rnnlang.codegen.packed`), and where the products go to BLAS instead, a C-ordered
    copy of U^T made there (NumPy's OpenBLAS repacked the transposed view at every step: 94
    against 48 us); large weights stay a view (`kernels.TRANSPOSE_COPY_MAX`), and so does
    every weight whose products use the panels."""
    from rnnlang.codegen import kernels

    src = rnnlang.compile(STACK, cache_dir=cache_dir, dtype="float64")._executor().source
    loop = next(body for body in src.split("\ndef ")[1:] if "reverse time loop" in body)
    head, steps = loop.split("for t in", 1)
    made = re.findall(r"^ +(\w+) = kernels\.transposed\((\w+), (\w+)\)$", head, re.M)
    assert made
    for copy, weight, panels in made:
        assert f"{panels} = kernels.pack({weight}.T, n_B)" in head
        assert f", {panels}, {copy}, " in steps and f"{weight}.T" not in steps
    small = np.arange(12.0).reshape(3, 4)
    none = kernels.pack(small.T, 1)  # too few rows: BLAS
    got = kernels.transposed(small, none)
    assert none.shape[0] == 0 and got.flags.c_contiguous and np.array_equal(got, small.T)
    assert np.shares_memory(kernels.transposed(small, kernels.pack(small.T, 8)), small)
    big = np.zeros((2, kernels.TRANSPOSE_COPY_MAX))
    assert np.shares_memory(kernels.transposed(big, none), big)


LSTM = """
model m(H = 5, F = 3) {
  input x: seq[F]
  h = lstm(H) over x
  output y = h
}
"""

TWICE = """
cell twice(x[I]) -> h[H] {
  param W[I, 2*H] = glorot
  param U[H, 2*H] = orthogonal
  a, b = split(x @ W + h[t-1] @ U, 2)
  h = tanh(a) * a + b
}
model m(H = 5, F = 3) {
  input x: seq[F]
  h = twice(H) over x
  output y = h
}
"""


def _agrees_with_reference(spec: str, cache_dir: Path) -> str:
    """The float64 CPU model's outputs and gradients (lengths given) equal the reference
    interpreter's; returns the generated source."""
    m = rnnlang.compile(spec, cache_dir=cache_dir, dtype="float64")
    ref = rnnlang.compile(spec, target="reference", dtype="float64")
    ref.params = {k: v.copy() for k, v in m.params.items()}
    rng = np.random.default_rng(3)
    x, cot = rng.normal(size=(6, 4, 3)), {"y": rng.normal(size=(6, 4, 5))}
    a, b = (mm.vjp({"x": x}, cot, lengths=[6, 2, 5, 1]) for mm in (m, ref))
    for k in b.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.outputs["y"], b.outputs["y"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.inputs["x"], b.inputs["x"], rtol=1e-10, atol=1e-12)
    return m._executor().source


def test_gates_split_into_parts_are_computed_where_the_parts_are_read(
        cache_dir: Path) -> None:
    """The LSTM's x_W + h U + b, split four ways, has no (B, 4H) buffer of its own in the
    forward loops: each gate's read computes the sum at its offset (`scan._through_slices`).
    A part read twice keeps the buffer (the sum is not computed twice)."""
    src = _agrees_with_reference(LSTM, cache_dir)
    forward = [body for body in src.split("\ndef ")[1:]
               if body.startswith("_loop_") and "forward time loop" in body]
    assert len(forward) == 2  # forward and forward_train
    for body in forward:
        head = body.split("for t in")[0]
        assert re.findall(r"^ +(\w+) = np\.empty\(\(n_B, 4 \* n_H\), DTYPE\)$", head,
                          re.M) == ["v_U"]
        for off in ("0", "n_H", "2 \\* n_H", "3 \\* n_H"):
            assert re.search(rf"\(\(x_W\[i0, {off} \+ i1\] \+ v_U\[i0, {off} \+ i1\]\) \+ "
                             rf"b\[{off} \+ i1\]\)", body)
    src = _agrees_with_reference(TWICE, cache_dir)
    forward = [body for body in src.split("\ndef ")[1:]
               if body.startswith("_loop_") and "forward time loop" in body]
    assert len(forward) == 2
    for body in forward:
        head = body.split("for t in")[0]
        assert len(re.findall(r"= np\.empty\(\(n_B, 2 \* n_H\), DTYPE\)$", head, re.M)) == 2
        assert "computed where" not in body
