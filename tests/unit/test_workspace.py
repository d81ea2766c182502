"""Work arrays kept between calls (`rnnlang.codegen.workspace`): results handed to the caller
never change on a later call, whatever the sizes, batch slices or nesting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlang
import rnnlang.executors
from rnnlang.codegen import workspace
from rnnlang.codegen.workspace import Workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

POOLED = """
model pooled(F = 3, H = 5) {
  input x: seq[F]
  h = stack(gru(H), 2) over x
  output y = h
  output m = mean(h)
  output l = last(h)
}
"""


def test_slots_reuse_memory_and_grow() -> None:
    ws = Workspace(min_bytes=0)
    a = ws.empty(0, (4, 5), np.float64)
    b = ws.empty(0, (2, 5), np.float64)  # smaller: the same memory
    assert np.shares_memory(a, b) and b.shape == (2, 5)
    c = ws.empty(0, (5, 5), np.float64)  # larger: a new buffer, a quarter more at least
    assert not np.shares_memory(a, c) and ws.bufs[0].size >= 25
    z = ws.zeros(1, (3,), np.float64)
    z += 7
    assert ws.zeros(1, (3,), np.float64).tolist() == [0.0, 0.0, 0.0]
    src = np.arange(6.0).reshape(2, 3)
    cp = ws.copy(2, src)
    assert np.array_equal(cp, src) and not np.shares_memory(cp, src)
    assert ws.nbytes == sum(v.nbytes for v in ws.bufs.values())


def test_small_arrays_are_not_kept() -> None:
    ws = Workspace()
    ws.empty(0, (10,), np.float32)
    assert ws.bufs == {}
    ws.empty(0, (workspace.MIN_BYTES // 4,), np.float32)
    assert list(ws.bufs) == [0]


def test_detached_copies_only_arrays_in_the_workspace() -> None:
    ws = Workspace(min_bytes=0)
    inside = ws.empty(0, (3, 4), np.float32)[1:]
    outside = np.ones(3, np.float32)
    got = ws.detached([inside, outside])
    assert not np.shares_memory(got[0], ws.bufs[0]) and np.array_equal(got[0], inside)
    assert got[1] is outside


def _data(rng: np.random.Generator, T: int, B: int, F: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(T, B, F)), rng.integers(1, T + 1, size=B)


@pytest.mark.parametrize("threads, parallel", [(1, "auto"), (2, "slices")])
@pytest.mark.parametrize("spec", ["pooled", "cnn_rnn"])
def test_results_survive_later_calls(spec: str, threads: int, parallel: str, cache_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     poisoned_workspaces: None) -> None:
    """Every work array is kept (MIN_BYTES 0) and starts as NaN, calls alternate sizes and
    modes, and every result handed out earlier still equals the reference interpreter's."""
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    monkeypatch.setattr(rnnlang.executors, "MIN_FLOPS", 0)
    src = POOLED if spec == "pooled" else EXAMPLES / "cnn_rnn.rnn"
    m = rnnlang.compile(src, dtype="float64", cache_dir=cache_dir, threads=threads,
                        parallel=parallel)
    ref = rnnlang.compile(src, target="reference", dtype="float64")
    ref.params = {k: v.copy() for k, v in m.params.items()}
    F = m.static["F"]
    rng = np.random.default_rng(1)
    kept = []
    for T in (9, 6, 11, 9):
        x, lengths = _data(rng, T, 8, F)
        kept.append(("forward", x, lengths, None, m.forward({"x": x}, lengths=lengths)))
        cots = {k: rng.normal(size=v.shape) for k, v in kept[-1][4].items()}
        kept.append(("vjp", x, lengths, cots, m.vjp({"x": x}, cots, lengths=lengths)))
    assert m._executor().workspace_bytes() > 0
    for kind, x, lengths, cots, got in kept:
        if kind == "forward":
            want = ref.forward({"x": x}, lengths=lengths)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)
            continue
        g = ref.vjp({"x": x}, cots, lengths=lengths)
        for mine, theirs in ((got.outputs, g.outputs), (got.params, g.params),
                             (got.inputs, g.inputs)):
            for k in theirs:
                np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-9, atol=1e-12)


def test_a_loss_that_trains_the_model_again_gets_its_own_workspaces(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """value_and_grad's loss runs between the forward and backward passes; a vjp made inside
    it must not overwrite the residuals the outer backward pass is about to read."""
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    m = rnnlang.compile(POOLED, dtype="float64", cache_dir=cache_dir)
    rng = np.random.default_rng(2)
    x, inner_x = rng.normal(size=(7, 4, 3)), rng.normal(size=(5, 4, 3))  # reuses buffers

    def loss(outs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        return float(outs["m"].sum()), {"m": np.ones_like(outs["m"])}

    def nested(outs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        m.vjp({"x": inner_x}, {"y": np.ones((5, 4, 5))})
        return loss(outs)

    want = m.value_and_grad(loss, {"x": x})
    got = m.value_and_grad(nested, {"x": x})
    for k in want.params:
        np.testing.assert_allclose(got.params[k], want.params[k], rtol=1e-12)
    np.testing.assert_allclose(got.inputs["x"], want.inputs["x"], rtol=1e-12)


LSTM = """
model m(H = 64, F = 32) {
  input x: seq[F]
  h = lstm(H) over x
  output y = h
}
"""


def test_functions_share_scratch_largest_first(cache_dir: Path) -> None:
    """Scratch slots are numbered by size, so forward_train's input projection and backward's
    cotangent of it, both (T, B, 4H), share slot 0; residuals have slots of their own; and a
    forward call after a training step needs no new memory."""
    m = rnnlang.compile(LSTM, dtype="float32", cache_dir=cache_dir)
    src = m.emit("python")
    assert "x_h_W = ws.empty(0, (n_T_x, n_B, 4 * n_H), DTYPE)" in src
    assert "d_x_h_W = ws.empty(0, (n_T_x, n_B, 4 * n_H), DTYPE)" in src  # set at every step
    assert f"h_h = ws.empty({workspace.RESIDUAL_SLOTS}, (n_T_x, n_B, n_H), DTYPE)" in src
    assert "acc_c = ws.zeros(" in src  # added into from the next step: zeroed first
    x = np.random.default_rng(3).normal(size=(60, 16, 32))  # (60, 16, 256) float32: 983 KB
    m.vjp({"x": x}, {"y": np.ones((60, 16, 64))})
    held = m.workspace_bytes()
    assert held > 0
    m.forward({"x": x})
    assert m.workspace_bytes() == held
    m.release_workspaces()
    assert m.workspace_bytes() == 0
