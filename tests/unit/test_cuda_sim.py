"""The CUDA target agrees with the CPU target, run in Numba's CUDA simulator (float64).

Numba picks the simulator when its config is first loaded, and the rest of the suite must keep
seeing "no GPU" (``test_api`` checks that error). So in an ordinary run this file holds one test
that runs the file again in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``; there (or when run by
hand with that variable, or on a real GPU with ``RNNLANG_REAL_GPU=1``) the real tests run.

Shapes are tiny (the simulator runs one OS thread per CUDA thread) but chosen to exercise the
layouts: B = 3 rows over 2 blocks of 2 and 1 rows, unequal lengths, T up to 4.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlang

pytestmark = pytest.mark.cudasim

HERE = Path(__file__)
ROOT = HERE.parents[2]
IN_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
REAL_GPU = os.environ.get("RNNLANG_REAL_GPU") == "1"
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
B, H, F = 3, 3, 2
T = 4
LENGTHS = np.array([4, 2, 3])


def test_rnnc_prints_cuda_source_without_a_gpu(tmp_path: Path) -> None:
    """``rnnc compile --target cuda --emit python`` only prints text: no GPU needed."""
    import io

    from rnnlang.cli import main
    out = io.StringIO()
    rc = main(["compile", str(ROOT / "examples" / "tagger.rnn"), "--target", "cuda", "--emit",
               "python", "--cache-dir", str(tmp_path)], out)
    text = out.getvalue()
    assert rc == 0
    ast.parse(text)
    assert "Target: cuda" in text and "@cuda.jit" in text
    assert text.count("_scan(") >= 6  # a persistent kernel per scan: definitions and launches


def test_uploads_have_canonical_strides() -> None:
    """Masks are (T, B, 1) views with a 0 stride on the last axis (NumPy still calls them
    C-contiguous); numba-cuda's copy walked such arrays element by element in Python, so
    every host array is uploaded with canonical strides."""
    from rnnlang.executors_cuda import c_order
    m = rnnlang.compile("model m(H, F) {\n  input x: seq[F]\n  h = elman(H) over x\n"
                        "  output y = h\n}\n", H=H, F=F)
    b = m._bind({"x": np.ones((T, B, F))}, {}, None, None)
    mask = next(v for k, v in b.values.items() if k.startswith("mask"))
    for host in (mask, np.ones((5, 3))[:, :, None]):
        a = c_order(host, np.float32)
        assert a.dtype == np.float32 and np.array_equal(a, host)
        assert a.strides == tuple(4 * int(np.prod(a.shape[i + 1:])) for i in range(a.ndim))


if not (IN_SIM or REAL_GPU):

    def start_simulator_run() -> tuple[subprocess.Popen[bytes], Path]:
        """This file again, in the simulator, in the background: tests/conftest.py starts it
        right after collection, so its ~100 s overlap the rest of the suite (which leaves the
        second core idle) instead of adding to it."""
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        log = Path(tempfile.mkdtemp(prefix="rnnlang-cudasim-")) / "out.txt"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "pytest", str(HERE), "-o",
                                     "addopts=", "-q", "-p", "no:cacheprovider"],
                                    cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        return proc, log

    def test_cuda_target_in_the_simulator(request: pytest.FixtureRequest) -> None:
        started = getattr(request.config, "_rnnlang_cudasim", None)
        proc, log = started if started is not None else start_simulator_run()
        try:
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
        out = log.read_text(errors="replace")
        tail = out[-9000:]
        assert rc == 0, tail
        assert " passed" in out and "skipped" not in out, tail

else:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from rnnlang.codegen.cuda_scan import kinds
    from rnnlang.executors_cuda import CudaExecutor, require_cuda
    from tests.unit.test_properties import Data, cell_sources, data

    @pytest.fixture(scope="module")
    def cache_dir() -> Path:
        """Generated modules kept between runs (keyed by their content, written atomically):
        the CPU side of each comparison costs ~10 s of Numba compilation when cold."""
        path = Path(tempfile.gettempdir()) / "rnnlang-cudasim-cache"
        path.mkdir(exist_ok=True)
        return path

    def cell_model(layer: str) -> str:
        return (f"model m(H, F) {{\n  input x: seq[F]\n  enc = {layer} over x\n"
                f"  output y = enc\n}}\n")

    TAGGER = """model tagger(H, O, F) {
  input x: seq[F]
  param Wy[H, O] = glorot
  param by[O] = zeros
  enc = stack(lstm(H), 2) over x
  output y = enc @ Wy + by
}
"""
    CONV_BIDIR = """model m(H, F) {
  input x: seq[F]
  c = conv1d(x, channels=4, kernel=3, stride=2, padding=1)
  enc = bidir(elman(H)) over c
  output y = enc
  output p = last(enc)
  output q = mean(enc)
}
"""
    ENC_DEC = """model seq2seq(H, F, G) {
  input x: seq[F]
  input z: seq[G]
  enc = lstm(H) over x
  dec = gru(H) over z from enc
  output y = dec
}
"""
    DELAY = """cell tdnn(x[I]) -> h[H] {
  state s[H]
  param W0[I, H] = glorot
  param W2[I, H] = glorot
  param V[H, H] = orthogonal
  param U[H, H] = orthogonal
  param b[H] = zeros
  s = tanh(x @ W0 + x[t-2] @ W2 + s[t-3] @ V + h[t-1] @ U + b)
  h = sigmoid(s) * s[t-1] + 0.5 * s
}
model m(H, F) {
  input x: seq[F]
  enc = tdnn(H) over x
  output y = reverse(enc)
}
"""
    FUNCS = """cell funcs(x[I]) -> h[H] {
  param W[I, H] = glorot
  param U[H, H] = orthogonal
  param b[H] = zeros
  a = x @ W + h[t-1] @ U + b
  h = tanh(relu(a) + softsign(a) + hard_sigmoid(3 * a) + softplus(a) + elu(a) + gelu(a)
           - 0.1 * abs(a) + 0.1 * sqrt(square(a) + 1) + log(exp(sigmoid(a)) + 1) + identity(a))
}
model m(H, F) {
  input x: seq[F]
  enc = funcs(H) over x
  output y = enc
}
"""
    CELLS = {"elman": "elman(H)", "jordan": "jordan(2, H)", "lstm": "lstm(H)", "gru": "gru(H)",
             "peephole_lstm": "peephole_lstm(H)", "indrnn": "indrnn(H)", "mgu": "mgu(H)"}
    MODELS = {**{k: cell_model(v) for k, v in CELLS.items()}, "funcs": FUNCS, "stacked": TAGGER,
              "bidir_conv_pool": CONV_BIDIR, "enc_dec": ENC_DEC, "delay": DELAY}
    DIMS = {"stacked": {"H": H, "O": 2}}
    NO_PASSES = ("fuse_gate_matmuls", "hoist_input_projections", "dce")

    def compile_pair(src: str, cache: Path, disable: tuple[str, ...] = (), oracle: str = "cpu",
                     **dims: int) -> tuple[rnnlang.Model, rnnlang.Model]:
        dims = dims or {"H": H}
        return tuple(rnnlang.compile(src, target=t, dtype="float64", cache_dir=cache,
                                     disable_passes=disable, **dims)
                     for t in ("cuda", oracle))  # type: ignore[return-value]

    def problem(m: rnnlang.Model, seed: int, t: int = T, lengths: np.ndarray = LENGTHS,
                ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
        """Random inputs, initial states and nonzero parameters (set on ``m``)."""
        rng = np.random.default_rng(seed)
        inputs = {n: rng.standard_normal((t, B, F if n == "x" else 2)) for n in m.input_names}
        m.forward(inputs, lengths=_lengths(m, lengths))  # sizes and parameters from the data
        m.params = {k: 0.5 * rng.standard_normal(v.shape) for k, v in m.params.items()}
        probe = m.forward(inputs, lengths=_lengths(m, lengths))
        cots = {k: rng.standard_normal(v.shape) for k, v in probe.items()}
        return inputs, _lengths(m, lengths), cots

    def _lengths(m: rnnlang.Model, lengths: np.ndarray) -> Any:
        return {n: lengths for n in m.input_names} if len(m.input_names) > 1 else lengths

    def check_pair(cu: rnnlang.Model, cp: rnnlang.Model, seed: int) -> None:
        inputs, lens, cots = problem(cp, seed)
        cu.params = {k: v.copy() for k, v in cp.params.items()}
        rng = np.random.default_rng(seed + 1)
        probe = cp.vjp(inputs, cots, lengths=lens)
        initial = {s: 0.5 * rng.standard_normal(probe.inputs[s].shape) for s in cp.state_names}
        fc = cu.forward(inputs, lengths=lens, initial=initial)
        fp = cp.forward(inputs, lengths=lens, initial=initial)
        assert set(fc) == set(fp)
        for k in fp:
            np.testing.assert_allclose(fc[k], fp[k], **TIGHT, err_msg=f"output {k}")
        gc = cu.vjp(inputs, cots, lengths=lens, initial=initial)
        gp = cp.vjp(inputs, cots, lengths=lens, initial=initial)
        assert set(gc.params) == set(gp.params) and set(gc.inputs) == set(gp.inputs)
        for k in gp.params:
            np.testing.assert_allclose(gc.params[k], gp.params[k], **TIGHT, err_msg=f"d {k}")
        for k in gp.inputs:
            np.testing.assert_allclose(gc.inputs[k], gp.inputs[k], **TIGHT, err_msg=f"d {k}")
        assert any(np.any(g != 0) for g in gp.params.values())

    @pytest.mark.parametrize("name", [*CELLS, "funcs"])
    def test_stdlib_cells_match_the_interpreter(name: str, cache_dir: Path) -> None:
        """Every standard cell (and one using every function of the language), against the
        reference interpreter: test_parity and
        test_targets hold the CPU target equal to it to 1e-10, and compiling seven more CPU
        models would add a minute of Numba compilation to a cold run."""
        cu, ref = compile_pair(MODELS[name], cache_dir, oracle="reference")
        check_pair(cu, ref, seed=len(name))

    @pytest.mark.parametrize("name", ["stacked", "bidir_conv_pool", "enc_dec", "delay"])
    def test_models_match_cpu(name: str, cache_dir: Path) -> None:
        cu, cp = compile_pair(MODELS[name], cache_dir, **DIMS.get(name, {}))
        check_pair(cu, cp, seed=len(name))

    def test_single_step_sequences(cache_dir: Path) -> None:
        cu, cp = compile_pair(TAGGER, cache_dir, H=H, O=2)
        rng = np.random.default_rng(2)
        x = rng.standard_normal((1, B, F))
        cp.forward({"x": x})
        cu.params = {k: v.copy() for k, v in cp.params.items()}
        cot = {"y": rng.standard_normal((1, B, 2))}
        gc, gp = cu.vjp({"x": x}, cot), cp.vjp({"x": x}, cot)
        np.testing.assert_allclose(gc.outputs["y"], gp.outputs["y"], **TIGHT)
        for k in gp.params:
            np.testing.assert_allclose(gc.params[k], gp.params[k], **TIGHT, err_msg=k)

    # a per-sequence vector input, repeat, dense, mean pooling; stateful adds final states
    VEC_INPUTS = """model m(F = 2, C = 2, H = 3) {
  input x: seq[F]
  input v: vec[C]
  param Wc[C, F] = glorot
  enc = lstm(H) over x + v @ Wc
  h0 = dense(v, H, act=tanh)
  g = gru(H) over repeat(h0, 3)
  output y = enc
  output z = mean(g)
}
"""

    @pytest.mark.parametrize("stateful", [False, True], ids=["plain", "stateful"])
    def test_vector_inputs_and_final_states(stateful: bool, cache_dir: Path) -> None:
        cu, ref = (rnnlang.compile(VEC_INPUTS, target=t, dtype="float64", stateful=stateful,
                                   cache_dir=cache_dir) for t in ("cuda", "reference"))
        rng = np.random.default_rng(6)
        inp = {"x": rng.standard_normal((T, B, F)), "v": rng.standard_normal((B, 2))}
        ref.forward(inp, lengths=LENGTHS)
        ref.params = {k: 0.5 * rng.standard_normal(v.shape) for k, v in ref.params.items()}
        cu.params = {k: v.copy() for k, v in ref.params.items()}
        fr, fc = ref.forward(inp, lengths=LENGTHS), cu.forward(inp, lengths=LENGTHS)
        assert set(fr) == set(fc) and (len(fr) == 5) == stateful
        for k in fr:
            np.testing.assert_allclose(fc[k], fr[k], **TIGHT, err_msg=k)
        cots = {k: rng.standard_normal(v.shape) for k, v in fr.items()}
        gr, gc = ref.vjp(inp, cots, lengths=LENGTHS), cu.vjp(inp, cots, lengths=LENGTHS)
        for k in gr.params:
            np.testing.assert_allclose(gc.params[k], gr.params[k], **TIGHT, err_msg=k)
        for k in gr.inputs:
            np.testing.assert_allclose(gc.inputs[k], gr.inputs[k], **TIGHT, err_msg=k)

    # tanh(b) is computed inside the step, so BPTT reduces its cotangent over the batch there
    IN_STEP_REDUCTION = """cell c(x[I]) -> h[H] {
  param W[I, H] = glorot
  param U[H, H] = orthogonal
  param b[H] = zeros
  h = tanh(x @ W + h[t-1] @ U + tanh(b) * h[t-1])
}
model m(H, F) {
  input x: seq[F]
  enc = c(H) over x
  output y = enc
}
"""

    def test_in_step_batch_reductions_are_summed_across_blocks(cache_dir: Path) -> None:
        """A parameter gradient reduced over the batch inside the backward step: each block
        adds its partial sum with atomics (B = 3 runs on 2 blocks)."""
        cu, cp = compile_pair(IN_STEP_REDUCTION, cache_dir)
        specs = [e.attr("scan") for e in cu.grad_programs().backward.eqns if e.op == "scan"]
        (kind, single), = [kinds(s) for s in specs]
        assert "part" in kind.values() and not single
        assert "cuda.atomic.add" in cu.emit("python")
        check_pair(cu, cp, seed=11)

    def test_unhoisted_products(cache_dir: Path) -> None:
        """With every pass off, the input products stay inside the time loop. H = 5: the
        in-step dot products run their 4-way unrolled loop and their remainder loop."""
        cu, cp = compile_pair(cell_model("peephole_lstm(H)"), cache_dir, disable=NO_PASSES, H=5)
        step = [e.attr("scan") for e in cu.program.eqns if e.op == "scan"][0].body
        assert sum(x.op == "matmul" for x in step.eqns) == 2
        check_pair(cu, cp, seed=7)

    @settings(max_examples=4, deadline=None)
    @given(src=cell_sources(), d=data(), optimize=st.booleans())
    def test_random_cells_match_the_interpreter(src: str, d: Data, optimize: bool,
                                                cache_dir: Path) -> None:
        """Random cells (test_properties' strategy), with or without the passes, against the
        reference interpreter, which test_targets holds equal to the CPU target; compiling each
        on the CPU would cost ~10 s."""
        off = () if optimize else NO_PASSES
        cu = rnnlang.compile(src, target="cuda", dtype="float64", cache_dir=cache_dir,
                             disable_passes=off)
        ref = rnnlang.compile(src, target="reference", dtype="float64", cache_dir=cache_dir,
                              disable_passes=off)
        rng = np.random.default_rng(d.seed)
        lengths = np.resize(d.lengths, B)
        x = rng.standard_normal((d.T, B, F))
        ref.forward({"x": x}, lengths=lengths)
        ref.params = {k: 0.5 * rng.standard_normal(v.shape) for k, v in ref.params.items()}
        cu.params = {k: v.copy() for k, v in ref.params.items()}
        fr = ref.forward({"x": x}, lengths=lengths)
        fc = cu.forward({"x": x}, lengths=lengths)
        for k in fr:
            np.testing.assert_allclose(fc[k], fr[k], rtol=1e-9, atol=1e-10, err_msg=src)
        cots = {k: rng.standard_normal(v.shape) for k, v in fr.items()}
        gr = ref.vjp({"x": x}, cots, lengths=lengths)
        gc = cu.vjp({"x": x}, cots, lengths=lengths)
        for k in gr.params:
            np.testing.assert_allclose(gc.params[k], gr.params[k], rtol=1e-9, atol=1e-10,
                                       err_msg=f"d {k}\n{src}")
        for k in gr.inputs:
            np.testing.assert_allclose(gc.inputs[k], gr.inputs[k], rtol=1e-9, atol=1e-10,
                                       err_msg=f"d {k}\n{src}")

    def test_drivers_launch_a_fixed_number_of_kernels(cache_dir: Path) -> None:
        """No loop in any host driver: launches per call do not grow with T."""
        m = rnnlang.compile(TAGGER, target="cuda", dtype="float64", cache_dir=cache_dir, H=H,
                            O=2)
        tree = ast.parse(m.emit("python"))
        drivers = [n for n in tree.body if isinstance(n, ast.FunctionDef)
                   and n.name in ("forward", "forward_train", "backward")]
        assert len(drivers) == 3
        for d in drivers:
            assert not any(isinstance(n, ast.For | ast.While | ast.comprehension)
                           for n in ast.walk(d)), d.name
        launches = {d.name: sum(isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)
                                for n in ast.walk(d)) for d in drivers}
        assert launches["forward"] >= 2  # two persistent scan kernels, at least
        scans = [n for n in tree.body if isinstance(n, ast.FunctionDef) and "scan" in n.name]
        assert len(scans) == 6  # one kernel per scan: 2 forward, 2 forward_train, 2 backward

    def test_device_array_inputs_are_used_in_place(cache_dir: Path) -> None:
        from numba import cuda
        cu, cp = compile_pair(TAGGER, cache_dir, H=H, O=2)
        x = np.random.default_rng(3).standard_normal((T, B, F))
        host = cu.forward({"x": x}, lengths=LENGTHS)["y"]
        dx = cuda.to_device(x)
        ex = cu._executor()
        assert ex._upload(dx) is dx
        np.testing.assert_allclose(cu.forward({"x": dx}, lengths=LENGTHS)["y"], host, **TIGHT)
        g_dev = cu.vjp({"x": dx}, {"y": np.ones_like(host)}, lengths=LENGTHS)
        g_host = cu.vjp({"x": x}, {"y": np.ones_like(host)}, lengths=LENGTHS)
        np.testing.assert_allclose(g_dev.inputs["x"], g_host.inputs["x"], **TIGHT)
        with pytest.raises(rnnlang.RnnUserError, match="float64"):
            cu.forward({"x": cuda.to_device(x.astype(np.float32))}, lengths=LENGTHS)
        # initial states too
        h0 = {s: np.random.default_rng(4).standard_normal((B, H)) for s in cu.state_names}
        with_host = cu.forward({"x": dx}, lengths=LENGTHS, initial=h0)["y"]
        with_dev = cu.forward({"x": dx}, lengths=LENGTHS,
                              initial={k: cuda.to_device(v) for k, v in h0.items()})["y"]
        np.testing.assert_allclose(with_dev, with_host, **TIGHT)
        assert not np.allclose(with_host, host)

    def test_parameters_are_uploaded_only_when_changed(cache_dir: Path) -> None:
        cu = rnnlang.compile(TAGGER, target="cuda", dtype="float64", cache_dir=cache_dir, H=H,
                             O=2)
        x = np.random.default_rng(4).standard_normal((T, B, F))
        y0 = cu.forward({"x": x}, lengths=LENGTHS)["y"]
        ex: CudaExecutor = cu._executor()
        first = ex.uploads
        assert first == len(cu.params)
        held = dict(ex.device_params())
        cu.forward({"x": x}, lengths=LENGTHS)
        cu.vjp({"x": x}, {"y": np.ones_like(y0)}, lengths=LENGTHS)
        assert ex.uploads == first
        assert all(ex.device_params()[k] is v for k, v in held.items())
        cu.params["by"] += 1.0  # an in-place update, as the host optimizer makes
        y1 = cu.forward({"x": x}, lengths=LENGTHS)["y"]
        assert ex.uploads == first + 1
        np.testing.assert_allclose(y1, y0 + 1.0, **TIGHT)

    def test_calls_too_big_for_the_gpu_fail_before_allocating(
            cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from collections import namedtuple

        from numba import cuda
        m = rnnlang.compile(TAGGER, target="cuda", dtype="float64", cache_dir=cache_dir, H=H,
                            O=2)
        x = np.random.default_rng(8).standard_normal((T, B, F))
        m.forward({"x": x})
        ex: CudaExecutor = m._executor()
        info = namedtuple("info", "free total")
        ctx = cuda.current_context()
        monkeypatch.setattr(type(ctx), "get_memory_info", lambda self: info(1000.0, 1000.0))
        allocated = []
        monkeypatch.setattr(cuda, "device_array", lambda *a, **k: allocated.append(a))
        with pytest.raises(rnnlang.RnnUserError, match="MiB of GPU memory"):
            m.forward({"x": x})
        assert not allocated
        # the bound is real: at least the residuals that BPTT keeps, (T, B, H) each
        need = ex.programs["forward_train"]
        from rnnlang.executors_cuda import device_bytes
        assert device_bytes(need, {"B": B, "H": H, "F": F, "O": 2, "T:x": T}, 8) > \
            10 * T * B * H * 8

    def test_one_fit_step_on_cuda_equals_one_on_cpu(cache_dir: Path) -> None:
        from rnnlang.train import TrainConfig, fit
        cu, cp = compile_pair(TAGGER, cache_dir, H=H, O=2)
        rng = np.random.default_rng(5)
        d = {"x": rng.standard_normal((T, B, F)), "y": rng.standard_normal((T, B, 2))}
        cp.forward({"x": d["x"]})
        cu.params = {k: v.copy() for k, v in cp.params.items()}
        before = {k: v.copy() for k, v in cp.params.items()}
        cfg = TrainConfig(epochs=1, batch_size=B, lr=0.05, optimizer="adam", max_steps=2)
        rc = fit(cu, d, ["y=mse"], cfg)
        rp = fit(cp, d, ["y=mse"], cfg)
        for k in cp.params:
            np.testing.assert_allclose(cu.params[k], cp.params[k], rtol=1e-9, atol=1e-12,
                                       err_msg=k)
        assert any(not np.allclose(cp.params[k], before[k]) for k in before)
        assert rc is not None and rp is not None

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_tiled_matmul_kernels(dtype: str) -> None:
        """The tiled shared-memory products (used above ``Launch.small`` output elements; the
        tiny models above use the untiled ones) on shapes that are not multiples of the tile."""
        from numba import cuda

        from rnnlang.codegen.cuda_kernels import Launch, for_dtype
        launch = Launch.for_device(small=0)
        k = for_dtype(np.dtype(dtype), launch.tile)
        rng = np.random.default_rng(9)
        a, w = rng.standard_normal((2, 3, 5)).astype(dtype), rng.standard_normal((5, 6))
        w = w.astype(dtype)
        g = rng.standard_normal((2, 3, 6)).astype(dtype)
        tol = {"rtol": 1e-5} if dtype == "float32" else TIGHT
        da, dw, dg = cuda.to_device(a), cuda.to_device(w), cuda.to_device(g)
        np.testing.assert_allclose(k.matmul(da, dw, False, launch).copy_to_host(), a @ w, **tol)
        np.testing.assert_allclose(k.matmul(dg, dw, True, launch).copy_to_host(), g @ w.T,
                                   **tol)
        np.testing.assert_allclose(k.matmul_tn(da, dg, launch).copy_to_host(),
                                   a.reshape(6, 5).T @ g.reshape(6, 6), **tol)

    def test_gpu_benchmark_script_runs(tmp_path: Path, cache_dir: Path) -> None:
        """benchmarks/bench_gpu.py end to end on a tiny case: parity, timings, table, JSON."""
        import importlib.util
        import json
        spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" /
                                                      "bench_gpu.py")
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        out = tmp_path / "gpu.json"
        rc = bench.main(["--smoke", "--cells", "mgu", "--oracle", "reference", "--warmup", "0",
                         "--reps", "1", "--budget", "0", "--out", str(out),
                         "--cache-dir", str(cache_dir)])
        assert rc == 0
        res = json.loads(out.read_text())
        assert res["parity"]["mgu"]["worst"] < 1e-4
        assert {(r["backend"], r["mode"]) for r in res["timings"] if "median_ms" in r} >= {
            ("rnnlang", "fwd"), ("rnnlang", "fwdbwd")}

    def test_unavailable_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
        def missing() -> Any:
            raise ImportError("No module named 'numba.cuda'")

        with pytest.raises(rnnlang.RnnUserError, match="numba-cuda") as exc:
            require_cuda(missing)
        assert "E700" in exc.value.render()
        from numba import cuda
        monkeypatch.setattr(cuda, "is_available", lambda: False)
        with pytest.raises(rnnlang.RnnUserError, match="no.*GPU|none is available"):
            rnnlang.compile(TAGGER, target="cuda", H=H, O=2)
