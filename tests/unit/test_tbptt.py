"""Truncated BPTT in `rnnlang.train.fit` (``TrainConfig.tbptt``/``tbptt_k2``, ``rnnc train
--tbptt``): TBPTT(k1, k2) windows, states carried (detached) from update to update, each step
scored once, exact resume."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import RnnUserError
from rnnlang.cli import main
from rnnlang.train import TrainConfig, fit
from rnnlang.train.checkpoint import load_checkpoint
from rnnlang.train.loop import Window, tbptt_windows

SPEC = """
model m(H = 4, F = 3, O = 2) {
  input x: seq[F]
  enc = stack(lstm(H), 2) over x
  g = gru(H) over enc
  output y = dense(g, O)
  output z = last(g)
}
"""
T = 10


def make_data(n: int = 12, t: int = T, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3))
    return {"x": x, "y": np.cumsum(x[..., :2], axis=1) * 0.3}


def _model(stateful: bool = True) -> rnnlang.Model:
    return rnnlang.compile(SPEC, target="reference", dtype="float64", stateful=stateful)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


CFG = dict(epochs=2, batch_size=5, lr=0.01, seed=1, optimizer="adam")


@pytest.mark.parametrize("k", [T, T + 5])
def test_chunks_as_long_as_the_sequence_equal_ordinary_training(k: int) -> None:
    plain = _model(stateful=False)
    r0 = fit(plain, make_data(), ["y=mse"], TrainConfig(**CFG))  # type: ignore[arg-type]
    m = _model()
    r1 = fit(m, make_data(), ["y=mse"], TrainConfig(tbptt=k, **CFG))  # type: ignore[arg-type]
    _same(m.params, plain.params)
    assert r1.history == r0.history and r1.steps == r0.steps == 6


def test_chunks_carry_detached_state() -> None:
    """fit with tbptt=4 on one batch equals a hand-written loop: per chunk of 4 steps, one
    sgd update from the gradient of that chunk, starting from the previous chunk's finals
    (12 steps: whole chunks; a short last chunk is covered by the GRU tests below)."""
    d = make_data(n=3, t=12)
    m = _model()
    r = fit(m, d, ["y=mse"], TrainConfig(epochs=1, batch_size=3, lr=0.1, optimizer="sgd",
                                         tbptt=4, seed=0))
    assert r.steps == 3  # chunks 0:4, 4:8, 8:12
    ref = _model()
    perm = np.random.default_rng(0).permutation(3)
    x = np.ascontiguousarray(d["x"][perm].transpose(1, 0, 2))
    y = d["y"][perm].transpose(1, 0, 2)
    state = None
    for t0 in range(0, 12, 4):
        xc, yc = x[t0:t0 + 4], y[t0:t0 + 4]

        def loss(outs: dict[str, np.ndarray], yc: np.ndarray = yc) -> tuple[
                float, dict[str, np.ndarray]]:
            diff = outs["y"] - yc
            return float(np.mean(diff ** 2)), {"y": 2 * diff / diff.size}

        g = ref.value_and_grad(loss, {"x": xc}, initial=state)
        for n, v in g.params.items():
            ref.params[n] = ref.params[n] - 0.1 * v
        state = ref.split_state(g.outputs)[1]
    for n in ref.params:
        np.testing.assert_allclose(m.params[n], ref.params[n], rtol=1e-12, atol=1e-14)
    # and it differs from full BPTT
    full = _model()
    fit(full, d, ["y=mse"], TrainConfig(epochs=1, batch_size=3, lr=0.1, optimizer="sgd"))
    assert not np.allclose(full.params["enc.0.W"], m.params["enc.0.W"])


def test_resume_mid_batch_is_exact(tmp_path: Path) -> None:
    cfg = dict(CFG, tbptt=4)  # 3 batches x 3 chunks per epoch
    m0 = _model()
    r0 = fit(m0, make_data(), ["y=mse"], TrainConfig(**cfg))  # type: ignore[arg-type]
    assert r0.steps == 18
    ck = tmp_path / "ck.npz"
    m1 = _model()
    fit(m1, make_data(), ["y=mse"], TrainConfig(checkpoint=ck, checkpoint_every=1,  # type: ignore[arg-type]
                                                 max_steps=5, **cfg))
    c = load_checkpoint(ck)
    st = c.meta["state"]
    assert (st["step"], st["batch"], st["chunk"]) == (5, 1, 2)  # inside the 2nd batch
    assert sorted(c.data) == ["carry/enc.0.c0", "carry/enc.0.h0", "carry/enc.1.c0",
                              "carry/enc.1.h0", "carry/g.h0", "perm"]
    assert np.abs(c.data["carry/g.h0"]).sum() > 0
    m2 = _model()
    r2 = fit(m2, make_data(), ["y=mse"], TrainConfig(checkpoint=ck, **cfg),  # type: ignore[arg-type]
             resume=True)
    assert r2.resumed_from == 5 and r2.steps == 18
    _same(m2.params, m0.params)
    assert r2.history == r0.history
    # a checkpoint at a batch's first chunk of epoch 2 (chunk 0, nothing carried)
    fit(_model(), make_data(), ["y=mse"], TrainConfig(checkpoint=ck, checkpoint_every=1,  # type: ignore[arg-type]
                                                       max_steps=10, **cfg))
    st = load_checkpoint(ck).meta["state"]
    assert (st["epoch"], st["batch"], st["chunk"]) == (1, 0, 1)
    m3 = _model()
    fit(m3, make_data(), ["y=mse"], TrainConfig(checkpoint=ck, **cfg), resume=True)  # type: ignore[arg-type]
    _same(m3.params, m0.params)


def test_tbptt_changes_the_trajectory_on_resume(tmp_path: Path) -> None:
    ck = tmp_path / "ck.npz"
    fit(_model(), make_data(), ["y=mse"], TrainConfig(checkpoint=ck, max_steps=2, tbptt=4,  # type: ignore[arg-type]
                                                       **CFG))
    with pytest.raises(RnnUserError, match="tbptt"):
        fit(_model(), make_data(), ["y=mse"], TrainConfig(checkpoint=ck, tbptt=5, **CFG),  # type: ignore[arg-type]
            resume=True)


def test_tbptt_errors() -> None:
    d = make_data()
    with pytest.raises(RnnUserError, match="stateful=True"):
        fit(_model(stateful=False), d, ["y=mse"], TrainConfig(tbptt=4))
    with pytest.raises(RnnUserError, match="per-step losses"):
        fit(_model(), dict(d, z=d["y"][:, -1]), ["y=mse", "z=mse"], TrainConfig(tbptt=4))
    with pytest.raises(RnnUserError, match="per-step losses"):
        fit(_model(), d, ["y=mse:last"], TrainConfig(tbptt=4))
    with pytest.raises(RnnUserError, match="unpadded"):
        fit(_model(), dict(d, lengths=np.full(12, T - 1)), ["y=mse"], TrainConfig(tbptt=4))
    with pytest.raises(RnnUserError, match="tbptt must be >= 1"):
        fit(_model(), d, ["y=mse"], TrainConfig(tbptt=0))
    # full-length lengths are fine; so is anything when nothing is cut (K >= T)
    fit(_model(), dict(d, lengths=np.full(12, T)), ["y=mse"],
        TrainConfig(tbptt=4, max_steps=2))
    fit(_model(), dict(d, lengths=np.full(12, T - 1), z=np.zeros((12, 4))),
        ["y=mse", "z=mse:last"], TrainConfig(tbptt=T, max_steps=2))


def test_cli_tbptt(tmp_path: Path) -> None:
    spec = tmp_path / "m.rnn"
    spec.write_text(SPEC)
    np.savez(tmp_path / "d.npz", **make_data())
    out = io.StringIO()
    rc = main(["train", str(spec), "--data", str(tmp_path / "d.npz"), "--loss", "y=mse",
               "--tbptt", "4", "--epochs", "1", "--batch-size", "6", "--no-progress",
               "--target", "reference", "--dtype", "float64", "-o", str(tmp_path / "p.npz")],
              out=out)
    assert rc == 0, out.getvalue()
    assert "6 steps" in out.getvalue()  # 2 batches x 3 chunks
    # the parameters serve the model compiled without stateful=True
    out = io.StringIO()
    rc = main(["eval", str(spec), "--params", str(tmp_path / "p.npz"), "--data",
               str(tmp_path / "d.npz"), "--loss", "y=mse", "--target", "reference"], out=out)
    assert rc == 0, out.getvalue()


@pytest.mark.parametrize(("t", "k1", "k2", "want"), [
    (10, 4, 4, [(0, 0, 4), (4, 4, 8), (6, 8, 10)]),
    (10, 2, 4, [(0, 0, 2), (0, 2, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]),
    (10, 3, 5, [(0, 0, 3), (1, 3, 6), (4, 6, 9), (5, 9, 10)]),
    (10, 4, 2, [(2, 2, 4), (6, 6, 8), (8, 8, 10)]),
    (10, 20, 5, [(5, 5, 10)]),
    (10, 10, 30, [(0, 0, 10)]),
])
def test_windows(t: int, k1: int, k2: int, want: list[tuple[int, int, int]]) -> None:
    assert tbptt_windows(t, k1, k2) == [Window(*w) for w in want]


@pytest.mark.parametrize(("t", "k1", "k2"), [(t, k1, k2) for t in (1, 7, 12)
                                             for k1 in (1, 2, 5, 12) for k2 in (1, 3, 5, 13)])
def test_windows_score_each_step_once(t: int, k1: int, k2: int) -> None:
    ws = tbptt_windows(t, k1, k2)
    scored = [s for w in ws for s in range(w.first, w.end)]
    assert scored == sorted(set(scored)) and set(scored) <= set(range(t))
    if k1 <= k2:  # nothing runs forward only
        assert scored == list(range(t))
    for w in ws:
        assert w.start <= w.first < w.end <= t
        assert w.end - w.start == min(k2, w.end)  # k2 steps deep wherever the data allow


GRU = """
model g(H = 3, F = 2) {
  input x: seq[F]
  h = gru(H) over x
  output y = h
}
"""


def _gru() -> rnnlang.Model:
    return rnnlang.compile(GRU, target="reference", dtype="float64", stateful=True)


def _hand_tbptt(x: np.ndarray, y: np.ndarray, k1: int, k2: int, lr: float
                ) -> dict[str, np.ndarray]:
    """TBPTT(k1, k2) written out for one batch of the GRU model whose output is its state,
    so states are read off the outputs: every k1 steps an sgd update from the loss on the
    steps since the last update, backpropagating k2 steps; the state at the next window's
    start is the one this update's forward run reached there (or, for steps that no window
    covers, a forward run with the current parameters)."""
    m = _gru()
    t = x.shape[0]
    e_prev, pos, state = 0, 0, None  # `state`: the h at step `pos`
    for c in range((t + k1 - 1) // k1):
        end = min((c + 1) * k1, t)
        start = max(0, end - k2)
        if pos < start:  # steps no window covers: forward only
            state = {"h.h0": m.forward({"x": x[pos:start]}, initial=state)["y"][-1]}
        first = max(e_prev, start)
        yw = y[start:end]

        def loss(outs: dict[str, np.ndarray], yw: np.ndarray = yw, k: int = first - start
                 ) -> tuple[float, dict[str, np.ndarray]]:
            diff = np.zeros_like(outs["y"])
            diff[k:] = outs["y"][k:] - yw[k:]
            n = diff[k:].size
            return float(np.sum(diff ** 2) / n), {"y": 2 * diff / n,
                                                   "final:h.h": np.zeros_like(diff[0])}

        g = m.value_and_grad(loss, {"x": x[start:end]}, initial=state)
        nxt = min(end, max(0, min((c + 2) * k1, t) - k2))  # the next window's start
        if nxt > start:
            state = {"h.h0": np.array(g.outputs["y"][nxt - start - 1])}
        pos = max(nxt, start)
        for n, v in g.params.items():
            m.params[n] = m.params[n] - lr * v
        e_prev = end
    return m.params


@pytest.mark.parametrize(("k1", "k2"), [(3, 5), (2, 4), (4, 2), (3, 1), (5, 20), (4, 4)])
def test_k1_k2_equals_the_written_out_algorithm(k1: int, k2: int) -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 11, 2)), rng.normal(size=(2, 11, 3)) * 0.5
    m = _gru()
    r = fit(m, {"x": x, "y": y}, ["y=mse"], TrainConfig(
        epochs=1, batch_size=2, lr=0.1, optimizer="sgd", tbptt=k1, tbptt_k2=k2, seed=0))
    assert r.steps == -(-11 // k1)
    perm = np.random.default_rng(0).permutation(2)
    want = _hand_tbptt(np.ascontiguousarray(x[perm].transpose(1, 0, 2)),
                       y[perm].transpose(1, 0, 2), k1, k2, 0.1)
    for n in want:
        np.testing.assert_allclose(m.params[n], want[n], rtol=1e-11, atol=1e-13, err_msg=n)


def test_k2_past_the_start_is_full_bptt_of_the_new_steps() -> None:
    """With k2 >= T every update backpropagates to step 0 from zero states: the gradient of
    the loss on steps c k1 : (c + 1) k1 of the prefix run, computed without any carrying."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(3, 9, 2)), rng.normal(size=(3, 9, 3))
    m = _gru()
    fit(m, {"x": x, "y": y}, ["y=mse"], TrainConfig(epochs=1, batch_size=3, lr=0.05,
                                                    optimizer="sgd", tbptt=4, tbptt_k2=9))
    ref = rnnlang.compile(GRU, target="reference", dtype="float64")
    perm = np.random.default_rng(0).permutation(3)
    xt, yt = x[perm].transpose(1, 0, 2), y[perm].transpose(1, 0, 2)
    for e0 in (0, 4, 8):
        e1 = min(e0 + 4, 9)

        def loss(outs: dict[str, np.ndarray], e0: int = e0, e1: int = e1
                 ) -> tuple[float, dict[str, np.ndarray]]:
            d = np.zeros_like(outs["y"])
            d[e0:] = outs["y"][e0:] - yt[e0:e1]
            return float(np.mean(d[e0:] ** 2)), {"y": 2 * d / d[e0:].size}

        g = ref.value_and_grad(loss, {"x": np.ascontiguousarray(xt[:e1])})
        for n, v in g.params.items():
            ref.params[n] = ref.params[n] - 0.05 * v
    for n in ref.params:
        np.testing.assert_allclose(m.params[n], ref.params[n], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(("k1", "k2"), [(3, 5), (4, 2)])
def test_resume_mid_batch_is_exact_k1_k2(tmp_path: Path, k1: int, k2: int) -> None:
    cfg = dict(CFG, tbptt=k1, tbptt_k2=k2)
    m0 = _model()
    r0 = fit(m0, make_data(), ["y=mse"], TrainConfig(**cfg))  # type: ignore[arg-type]
    ck = tmp_path / "ck.npz"
    for stop in (2, 5):
        fit(_model(), make_data(), ["y=mse"], TrainConfig(  # type: ignore[arg-type]
            checkpoint=ck, checkpoint_every=1, max_steps=stop, **cfg))
        assert load_checkpoint(ck).meta["state"]["chunk"] > 0
        m1 = _model()
        r1 = fit(m1, make_data(), ["y=mse"], TrainConfig(checkpoint=ck, **cfg),  # type: ignore[arg-type]
                 resume=True)
        _same(m1.params, m0.params)
        assert r1.history == r0.history
        ck.unlink()
    # k2 is part of the trajectory: resuming with another k2 is refused
    fit(_model(), make_data(), ["y=mse"], TrainConfig(checkpoint=ck, max_steps=2, **cfg))  # type: ignore[arg-type]
    with pytest.raises(RnnUserError, match="tbptt_k2"):
        fit(_model(), make_data(), ["y=mse"], TrainConfig(  # type: ignore[arg-type]
            checkpoint=ck, **dict(cfg, tbptt_k2=k2 + 1)), resume=True)


def test_k1_k2_errors_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_data()
    with pytest.raises(RnnUserError, match="tbptt_k2 needs tbptt"):
        fit(_model(), d, ["y=mse"], TrainConfig(tbptt_k2=4))
    with pytest.raises(RnnUserError, match="tbptt_k2 must be >= 1"):
        fit(_model(), d, ["y=mse"], TrainConfig(tbptt=2, tbptt_k2=0))
    # k1 >= T but k2 < T still truncates: the model must be stateful
    with pytest.raises(RnnUserError, match="stateful=True"):
        fit(_model(stateful=False), d, ["y=mse"], TrainConfig(tbptt=T, tbptt_k2=3))
    spec = tmp_path / "m.rnn"
    spec.write_text(SPEC + "train m {\n  tbptt = 2\n  tbptt_k2 = 5\n  epochs = 1\n}\n")
    np.savez(tmp_path / "d.npz", **d)
    args = ["train", str(spec), "--data", str(tmp_path / "d.npz"), "--loss", "y=mse",
            "--no-progress", "--target", "reference", "--dtype", "float64", "--batch-size",
            "6", "-o", str(tmp_path / "p.npz")]
    out = io.StringIO()
    assert main(args, out=out) == 0, out.getvalue()
    assert "10 steps" in out.getvalue()  # 2 batches x 5 updates
    out = io.StringIO()
    assert main([*args, "--tbptt", "5", "--tbptt-k2", "3"], out=out) == 0, out.getvalue()
    assert "4 steps" in out.getvalue()
    spec.write_text(SPEC + "train m {\n  tbptt_k2 = 5\n}\n")
    capsys.readouterr()
    assert main(args, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "tbptt_k2 needs tbptt" in err and "m.rnn:" in err and "^" in err
