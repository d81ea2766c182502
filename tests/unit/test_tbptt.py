"""Truncated BPTT in `rnnlang.train.fit` (``TrainConfig.tbptt``, ``rnnc train --tbptt``):
chunks of K steps, final states carried (detached) from chunk to chunk, exact resume."""

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
    sgd update from the gradient of that chunk, starting from the previous chunk's finals."""
    d = make_data(n=3)
    m = _model()
    r = fit(m, d, ["y=mse"], TrainConfig(epochs=1, batch_size=3, lr=0.1, optimizer="sgd",
                                         tbptt=4, seed=0))
    assert r.steps == 3  # chunks 0:4, 4:8, 8:10
    ref = _model()
    perm = np.random.default_rng(0).permutation(3)
    x = np.ascontiguousarray(d["x"][perm].transpose(1, 0, 2))
    y = d["y"][perm].transpose(1, 0, 2)
    state = None
    for t0 in range(0, T, 4):
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
