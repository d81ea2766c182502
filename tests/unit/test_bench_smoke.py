"""Keeps benchmarks/bench_cpu.py working: a tiny end-to-end run, and its NumPy baselines against
the independent reference. Nothing here asserts anything about times (the machine is noisy)."""

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
    rc = bench.main(["--cases", "5x2x8", "--cells", "mgu", "--repeats", "1", "--min-repeats", "1",
                     "--warmup", "1", "--budget", "0", "--min-sample-ms", "0",
                     "--cache-dir", str(cache_dir), "--json", str(path)], out=out)
    text = out.getvalue()
    assert rc == 0, text
    rep = json.loads(path.read_text())
    expected = {"rnnlang", "numpy-loop"}
    if bench.torch is not None:
        expected |= {"torch-loop", "torch-script"}
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
