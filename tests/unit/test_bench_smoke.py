"""Keeps benchmarks/bench_cpu.py and `rnnc bench` working: tiny end-to-end runs, the NumPy and JAX
baselines against independent references, the torch IR evaluator against the NumPy reference
interpreter. Nothing here asserts anything about times (the machine is noisy)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests import reference as R

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cpu.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_main_tiny_case(bench: ModuleType, cache_dir: Path, tmp_path: Path) -> None:
    """One cell (mgu: the acceptance cell, and no native torch version, so it compiles one
    rnnlang model) on T=5, B=2, H=8 with one timed round; every installed baseline runs."""
    out = io.StringIO()
    path = tmp_path / "bench.json"
    # torch-compile takes 5-30 s per mode even here: its limit logic is tested on its own below
    rc = bench.main(["--cases", "5x2x8", "--cells", "mgu", "--repeats", "1", "--min-repeats", "1",
                     "--warmup", "1", "--budget", "0", "--min-sample-ms", "0",
                     "--backends", "numpy-loop,torch-native,torch-loop,torch-script,jax-scan",
                     "--cache-dir", str(cache_dir), "--json", str(path)], out=out)
    text = out.getvalue()
    assert rc == 0, text
    rep = json.loads(path.read_text())
    expected = {"rnnlang", "numpy-loop"}
    if bench.torch is not None:
        expected |= {"torch-loop", "torch-script"}
    if bench.bench_jax.available():
        expected |= {"jax-scan"}
    for mode in ("fwd", "fwdbwd"):
        got = {r["backend"] for r in rep["results"] if r["mode"] == mode}
        assert got == expected, (mode, got)
    for r in rep["results"]:
        assert (r["T"], r["B"], r["H"], r["cell"]) == (5, 2, 8, "mgu")
        assert r["median_ms"] > 0 and r["tokens_per_s"] > 0 and r["floor_ms"] > 0
        assert len(r["samples_ms"]) == r["repeats"] == 1
    assert rep["checks"] and all(c["ok"] for c in rep["checks"]), rep["checks"]
    assert [a["status"] for a in rep["acceptance"]] == ["SKIP", "SKIP"]
    assert rep["compile"][0]["cell"] == "mgu"
    # the readable table comes last
    last = text.rstrip().splitlines()
    assert last[-1].startswith("| 5x2x8 | mgu ") and "fwdbwd" in last[-1]


def test_case_parsing(bench: ModuleType) -> None:
    assert bench.parse_case("medium") == ("medium", (100, 32, 128))
    assert bench.parse_case("7x3x16") == ("7x3x16", (7, 3, 16))
    with pytest.raises(SystemExit):
        bench.main(["--cases", "huge"], out=io.StringIO())


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman", "mgu"])
def test_numpy_baseline_matches_reference(bench: ModuleType, cell: str) -> None:
    """Forward against tests/reference.py; the hand-written BPTT against central differences of
    the reference forward in float64, along one random direction per gradient."""
    T, B, H = 4, 2, 3
    rng = np.random.default_rng(7)
    short = R.random_params(cell, H, H, rng, scale=0.5)
    params = {f"h.{k}": v.astype(np.float32) for k, v in short.items()}
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    cot = rng.standard_normal((T, B, H)).astype(np.float32)
    states = bench.STATES[cell]
    s0 = {s: np.zeros((B, H), np.float32) for s in states}
    ref_seq = getattr(R, f"{cell}_seq")
    ref_state = {"s": "h"}  # the reference calls elman's state h

    ys, _ = bench.NUMPY_CELLS[cell](params, x, s0, None)
    want, _ = ref_seq(short, x.astype(np.float64))
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-5)

    ys2, grads = bench.NUMPY_CELLS[cell](params, x, s0, cot)
    np.testing.assert_allclose(ys2, want, rtol=1e-5, atol=1e-5)
    expected = {"x"} | set(params) | {f"h.{s}0" for s in states}
    assert set(grads) == expected

    def loss(p: dict[str, np.ndarray], xs: np.ndarray, init: dict[str, np.ndarray]) -> float:
        y, _ = ref_seq(p, xs, init=init)
        return float(np.sum(y * cot))

    p64 = {k: v.astype(np.float64) for k, v in short.items()}
    x64 = x.astype(np.float64)
    zero = {ref_state.get(s, s): np.zeros((B, H)) for s in states}
    eps = 1e-6
    for name, g in grads.items():
        d = rng.standard_normal(g.shape)
        args = []
        for sign in (1.0, -1.0):
            p, xs, init = dict(p64), x64, dict(zero)
            if name == "x":
                xs = x64 + sign * eps * d
            elif name in params:
                p[name[2:]] = p64[name[2:]] + sign * eps * d
            else:
                s = ref_state.get(name[2:-1], name[2:-1])
                init[s] = zero[s] + sign * eps * d
            args.append(loss(p, xs, init))
        numeric = (args[0] - args[1]) / (2 * eps)
        analytic = float(np.sum(g.astype(np.float64) * d))
        assert abs(numeric - analytic) <= 1e-3 * max(1.0, abs(numeric)), (name, numeric, analytic)


def test_first_call_limit_and_compile_gate(bench: ModuleType) -> None:
    """A first call running past the limit is interrupted (not waited for), and the gate skips
    the same cell and mode at a T as long or longer, and predicts from shorter compiles."""
    import time
    t0 = time.perf_counter()
    assert bench.first_call_within(lambda: time.sleep(5), 0.2) is None
    assert time.perf_counter() - t0 < 2
    secs = bench.first_call_within(lambda: None, 5)
    assert secs is not None and secs < 1
    with pytest.raises(ZeroDivisionError):  # failures are the caller's to report
        bench.first_call_within(lambda: 1 / 0, 5)
    gate = bench.CompileGate(100.0)
    assert gate.skip_reason("lstm", "fwd", 50) is None
    gate.record("lstm", "fwd", 50, 40.0)
    assert gate.skip_reason("lstm", "fwd", 100) is None  # 80 s predicted
    assert "predicted" in gate.skip_reason("lstm", "fwd", 1000)
    assert gate.skip_reason("lstm", "fwdbwd", 1000) is None  # another mode
    gate.record("gru", "fwdbwd", 100, None)
    assert "ran past" in gate.skip_reason("gru", "fwdbwd", 100)
    assert gate.skip_reason("gru", "fwdbwd", 50) is None


def _cifg_reference(bench: ModuleType, T: int, B: int, H: int) -> tuple[dict, np.ndarray,
                                                                         np.ndarray, object]:
    import rnnlang
    m = rnnlang.compile(bench.model_source("cifg"), target="reference", dtype="float64", H=H,
                        F=H)
    rng = np.random.default_rng(3)
    for v in m.params.values():
        v[...] = rng.uniform(-0.5, 0.5, v.shape)
    x = rng.standard_normal((T, B, H))
    cot = rng.standard_normal((T, B, H))
    return m.params, x, cot, m.vjp({"x": x}, {"y": cot})


def test_cifg_numpy_baseline_matches_interpreter(bench: ModuleType) -> None:
    """The coupled-gate LSTM has no entry in tests/reference.py: its NumPy loop and hand-written
    BPTT are checked against rnnlang's reference interpreter (float64) instead."""
    T, B, H = 5, 2, 3
    params, x, cot, want = _cifg_reference(bench, T, B, H)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    s0 = {s: np.zeros((B, H), np.float32) for s in bench.STATES["cifg"]}
    ys, grads = bench.np_cifg(p32, x.astype(np.float32), s0, cot.astype(np.float32))
    np.testing.assert_allclose(ys, want.outputs["y"], rtol=1e-4, atol=1e-5)
    ref = {**want.params, **want.inputs}
    assert set(grads) == set(ref)
    for k, g in grads.items():
        np.testing.assert_allclose(g, ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("cell", ["lstm", "gru", "elman", "mgu", "cifg"])
def test_jax_and_torch_loops_match_numpy_baseline(bench: ModuleType, cell: str) -> None:
    """Every loop baseline (torch eager, JAX scan) against the NumPy loop, forward and BPTT."""
    T, B, H = 4, 2, 3
    rng = np.random.default_rng(5)
    names = [f"h.{n}" for n in bench.PARAM_ORDER[cell]]
    G = bench.GATES[cell] * H
    shapes = {"lstm": [(H, G), (H, G), (G,)], "gru": [(H, G), (H, G), (G,), (G,)],
              "elman": [(H, H), (H, H), (H,)], "cifg": [(H, G), (H, G), (G,)],
              "mgu": [(H, H), (H, H), (H,), (H, H), (H, H), (H,)]}[cell]
    params = {n: rng.uniform(-0.6, 0.6, s).astype(np.float32)
              for n, s in zip(names, shapes, strict=True)}
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    cot = rng.standard_normal((T, B, H)).astype(np.float32)
    s0 = {s: rng.standard_normal((B, H)).astype(np.float32) * 0.5 for s in bench.STATES[cell]}
    ys, grads = bench.NUMPY_CELLS[cell](params, x, s0, cot)
    want = {"y": ys, **grads}
    got = []
    if bench.bench_jax.available():
        got.append(bench.bench_jax.JaxScan(cell, params, x, s0, cot).check_fwdbwd())
    if bench.torch is not None:
        pb = bench.Problem("t", T, B, H, cell, x, cot, params, s0)
        got.append(bench.TorchLoopBackend(pb).check_fwdbwd())
    if not got:
        pytest.skip("neither JAX nor torch is installed")
    for g in got:
        assert set(g) == set(want)
        for k, v in want.items():
            np.testing.assert_allclose(g[k], v, rtol=2e-4, atol=2e-5, err_msg=k)


# ---- rnnc bench ----------------------------------------------------------------------------

SPEC = """model tiny(F = 3, H = 4) {
  input x: seq[F]
  h = elman(H) over x
  output y = h
  output s = mean(h)
}
"""
# for the gradient check (reference target, so no JIT): two stacked LSTM layers
SPEC_LSTM2 = """model tiny2(F = 3, H = 4) {
  input x: seq[F]
  h = stack(lstm(H), 2) over x
  output y = h
  output s = mean(h)
}
"""


def _rnnc(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from rnnlang.cli import main
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_rnnc_bench_prints_the_table(tmp_path: Path, cache_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.rnn"
    spec.write_text(SPEC)
    code, out, err = _rnnc(["bench", str(spec), "--T", "4", "--B", "2", "-D", "H=5",
                            "--repeats", "1", "--budget", "0", "--cache-dir", str(cache_dir)],
                           capsys)
    assert code == 0, err
    assert "model tiny" in out and "T=4, B=2" in out and "H=5" in out
    assert 'reference interpreter (target="reference")' in out
    lines = out.rstrip().splitlines()
    rows = [ln for ln in lines if ln.startswith("| fwd")]
    assert len(rows) == 2 and rows[0].startswith("| fwd ") and rows[1].startswith("| fwdbwd")
    head = next(ln for ln in lines if ln.startswith("| mode"))
    assert "numpy-loop ms (ratio)" in head
    from rnnlang.bench import have_torch
    assert ("torch-loop ms (ratio)" in head) == have_torch()
    for row in rows:  # every cell a time, none n/a
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(head.strip("|").split("|"))
        assert all(float(c.split()[0]) > 0 for c in cells[1:])


def test_rnnc_bench_bad_spec_is_a_located_error(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.rnn"
    spec.write_text("model m(H = 4) {\n  input x: seq[H]\n  h = lstm(H) over y\n"
                    "  output o = h\n}\n")
    code, out, err = _rnnc(["bench", str(spec), "--T", "3", "--B", "1"], capsys)
    assert code == 1
    assert f"{spec}:3:" in err and "error" in err, err
    assert out == ""


@pytest.mark.parametrize("argv", [["--modes", "sideways"], ["--T", "0"], ["--target", "reference"]])
def test_rnnc_bench_usage_errors(argv: list[str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "tiny.rnn"
    spec.write_text(SPEC)
    code, _, err = _rnnc(["bench", str(spec), *argv], capsys)
    assert code == 2 and "rnnc: error:" in err


# ---- the torch IR evaluator ------------------------------------------------------------------

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.rnn"))


def test_torch_evaluator_covers_the_op_table() -> None:
    pytest.importorskip("torch")
    from rnnlang.bench import torch_eval
    from rnnlang.ir.nodes import Eqn, Program
    from rnnlang.ir.ops import OPS
    assert set(OPS) <= torch_eval.SUPPORTED, set(OPS) - torch_eval.SUPPORTED
    bogus = Program("p", (), (), (Eqn("bogus", (), ()),), (), ())
    assert torch_eval.unsupported_ops(bogus) == ["bogus"]


def test_torch_evaluator_pointwise_rows_match_numpy() -> None:
    torch = pytest.importorskip("torch")
    from rnnlang.bench import torch_eval
    from rnnlang.ir.ops import OPS
    rng = np.random.default_rng(0)
    a = rng.standard_normal(64) * 3
    b = rng.standard_normal(64)
    for name, op in OPS.items():
        if not op.pointwise or name == "select":
            continue
        args = [np.abs(a) + 0.1 if name in ("log", "sqrt") else a, b][:op.arity]
        want = op.numpy(*args)
        fn = torch_eval.UNARY.get(name) or torch_eval.BINARY[name]
        got = fn(*(torch.from_numpy(x) for x in args)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_torch_evaluator_matches_interpreter(path: Path) -> None:
    """The forward program, the training forward and the derived backward program of every
    example, with padded sequences, through the torch evaluator and the NumPy interpreter."""
    torch = pytest.importorskip("torch")
    import rnnlang
    from rnnlang.bench import torch_eval
    from rnnlang.interp import run_program
    from rnnlang.runtime import bind_inputs
    from rnnlang.viz.gradflow import random_inputs

    m = rnnlang.compile(path, target="reference", dtype="float64")
    rng = np.random.default_rng(1)
    inputs = random_inputs(m, 6, 3, rng)
    lengths = {i.var.name: rng.integers(2, 7, 3) for i in m.program.inputs if i.role == "seq"}
    m.forward(inputs, lengths=lengths or None)  # allocates parameters sized from the data
    b = bind_inputs(m.program, m.static, inputs, lengths or None, None, m.dtype)
    g = m.grad_programs()
    vals = {**m.params, **b.values}
    fwd = run_program(g.forward, vals, b.dims, m.dtype)
    n = len(m.program.outputs)
    vals_bwd = {**vals, **{r.name: o for r, o in zip(g.residuals, fwd[n:], strict=True)},
                **{c.name: rng.standard_normal(o.shape)
                   for c, o in zip(g.cotangents, fwd[:n], strict=True)}}
    for prog, v in ((m.program, vals), (g.forward, vals), (g.backward, vals_bwd)):
        want = run_program(prog, v, b.dims, m.dtype)
        got = torch_eval.run_program(prog, torch_eval.to_torch(v, torch.float64), b.dims,
                                     torch.float64)
        assert len(got) == len(want)
        for w, t in zip(want, got, strict=True):
            np.testing.assert_allclose(t.numpy(), w, rtol=1e-10, atol=1e-12)


def test_torch_loop_gradients_match_rnnlang() -> None:
    """Autograd through the evaluated forward program gives rnnlang's BPTT gradients."""
    pytest.importorskip("torch")
    import rnnlang
    from rnnlang.bench.spec import BenchOptions, bench_spec
    m = rnnlang.compile(SPEC_LSTM2, target="reference", dtype="float64", H=3)
    res = bench_spec(m, None, BenchOptions(steps=4, batch=2, repeats=1, min_repeats=1,
                                           budget_s=0, warmup=1))
    assert res.errors["fwd"]["torch-loop"] < 1e-12
    assert res.errors["fwdbwd"]["torch-loop"] < 1e-10
    assert not res.mismatches


def test_a_failing_torch_compile_is_a_skip_not_a_crash(bench: ModuleType) -> None:
    """torch.compile can fail outright (inductor hit its recursion limit on the unrolled
    T=1000 backward): the case is skipped with the reason, and the run goes on."""
    import argparse

    class Failing(bench.Backend):
        name = "torch-compile"

        def fwd(self) -> None:
            raise RecursionError("maximum recursion depth exceeded")

    args = argparse.Namespace(compile_limit=5.0)
    st = bench.RunState(args, "", io.StringIO(), [], np.random.default_rng(0),
                        bench.GemmTable(0), bench.CompileGate(5.0))
    pb = bench.Problem("long", 1000, 1, 2, "elman", np.zeros(1), np.zeros(1), {})
    if bench.torch is None:
        pytest.skip("torch is not installed")
    assert bench.compile_or_skip(st, Failing(), pb, "fwd") is False
    assert len(st.skips) == 1 and "RecursionError" in st.skips[0]["reason"]
    assert "failed" in st.out.getvalue()


def test_floors_use_each_shapes_fastest_measurement_of_the_run(
        bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GEMM shape is measured again in every cell that uses it and keeps its fastest time,
    and the report's floors are recomputed from those at the end: one measurement in a slow
    moment put a floor above rnnlang's own time."""
    import argparse

    seconds = {"now": 2.0}
    measured: list[tuple[int, int, int]] = []

    def fake(m: int, k: int, n: int, rng: object) -> dict[str, float]:
        measured.append((m, k, n))
        s = seconds["now"] * m * k * n
        return {"s": s, "python_s": s, "njit_s": s, "gflops": 1.0}

    monkeypatch.setattr(bench, "time_gemm", fake)
    table = bench.GemmTable(0)
    table.new_epoch()
    assert table.t(1, 2, 3) == 12.0 and table.t(1, 2, 3) == 12.0  # once per epoch
    assert len(measured) == 1
    seconds["now"] = 1.0
    assert table.t(1, 2, 3, measure=False) == 12.0 and len(measured) == 1
    table.new_epoch()
    assert table.t(1, 2, 3) == 6.0
    seconds["now"] = 3.0
    table.new_epoch()
    assert table.t(1, 2, 3) == 6.0 and len(measured) == 3  # slower: the fastest stays

    st = bench.RunState(argparse.Namespace(), "", io.StringIO(), [], np.random.default_rng(0),
                        bench.GemmTable(0), bench.CompileGate(5.0))
    seconds["now"] = 2.0
    for cell in ("gru", "cifg"):  # three gates each: the same shapes
        st.gemm.new_epoch()
        fl = bench.floor_times(st.gemm, 4, 2, 3, 3, bench.GATES[cell])
        st.floors.append({"case": "c", "T": 4, "B": 2, "H": 3, "cell": cell, **fl})
        st.results.append({"case": "c", "cell": cell, "mode": "fwd",
                           "floor_ms": fl["fwd_s"] * 1e3})
        seconds["now"] = 1.0  # the second cell's measurements are twice as fast
    first = st.results[0]["floor_ms"]
    bench.final_floors(st)
    assert st.results[0]["floor_ms"] == pytest.approx(first / 2)
    assert st.results[1]["floor_ms"] == pytest.approx(first / 2)
    assert st.floors[0]["fwd_s"] == pytest.approx(first / 2e3)


def test_bench_memory_has_a_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` prints usage (it used to start the whole measurement), an unknown case is a
    usage error (exit 2)."""
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH.with_name(
        "bench_memory.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as done:
        mod.main(["--help"])
    assert done.value.code == 0 and "--cases" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        mod.main(["--cases", "small,huge"])
    assert done.value.code == 2 and "unknown case 'huge'" in capsys.readouterr().err
