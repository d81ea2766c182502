"""Training: losses (values and gradients, masks), optimizers against PyTorch, clipping,
schedules, data files and their errors, fit/evaluate/predict, determinism, the CLI."""

from __future__ import annotations

import argparse
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import RnnUserError
from rnnlang.train import TrainConfig, evaluate, fit, predict
from rnnlang.train.data import from_arrays, load_data, make_batch, split
from rnnlang.train.losses import LossSpec, log_softmax, loss_terms, make_loss_fn, parse_loss
from rnnlang.train.optim import (
    clip_by_global_norm,
    clip_by_value,
    global_norm,
    make_optimizer,
    make_schedule,
)

SPEC = """
model m(H = 4, F = 3, O = 2) {
  input x: seq[F]
  param Wy[H, O] = glorot
  param by[O] = zeros
  enc = gru(H) over x
  output y = enc @ Wy + by
  output z = last(enc) @ Wy
}
"""


def make_data(n: int = 24, t: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 3))
    lens = rng.integers(2, t + 1, n)
    y = np.cumsum(x[..., :2], axis=1) * 0.3
    return {"x": x, "y": y, "lengths": lens, "cls": (x[..., 0] > 0).astype(np.int64),
            "z": y[np.arange(n), lens - 1]}


@pytest.fixture
def ref_model() -> rnnlang.Model:
    return rnnlang.compile(SPEC, target="reference", dtype="float64")


# losses -------------------------------------------------------------------------------------
def _numeric(f, z: np.ndarray, eps: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = np.zeros_like(z)
    for i in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[i] += eps
        zm[i] -= eps
        g[i] = (f(zp) - f(zm)) / (2 * eps)
    return g


@pytest.mark.parametrize("kind", ["mse", "xent", "bce"])
@pytest.mark.parametrize("reduction", ["step", "last"])
def test_loss_gradients_match_finite_differences(kind: str, reduction: str) -> None:
    rng = np.random.default_rng(1)
    t, b, o = 4, 3, 3
    z = rng.normal(size=(t, b, o))
    lens = np.array([4, 2, 1])
    if kind == "xent":
        tgt = rng.integers(0, o, (t, b))
    elif kind == "bce":
        tgt = rng.uniform(size=(t, b, o))
    else:
        tgt = rng.normal(size=(t, b, o))
    spec = LossSpec("y", kind, reduction)
    fn = make_loss_fn([spec], {"y": tgt}, {"y": lens})
    value, cots = fn({"y": z})
    num = _numeric(lambda zz: fn({"y": zz})[0], z)
    np.testing.assert_allclose(cots["y"], num, atol=1e-7)
    # padded steps get no gradient and do not change the value
    dead = np.arange(t)[:, None] >= lens[None, :]
    assert np.all(cots["y"][dead] == 0)
    z2 = z.copy()
    z2[dead] = 1e3
    assert fn({"y": z2})[0] == pytest.approx(value)


def test_loss_values_by_hand() -> None:
    z = np.array([[[1.0, 2.0]], [[3.0, -1.0]]])  # T=2, B=1
    y = np.zeros_like(z)
    tot, cnt, _ = loss_terms(z, y, LossSpec("y", "mse"), np.array([1]))
    assert (tot, cnt) == (5.0, 2.0)
    tot, cnt, _ = loss_terms(z, y, LossSpec("y", "mse", "last"), np.array([2]))
    assert (tot, cnt) == (10.0, 2.0)
    tot, cnt, _ = loss_terms(z, np.array([[1], [0]]), LossSpec("y", "xent"), None)
    expect = -(log_softmax(z[0, 0])[1] + log_softmax(z[1, 0])[0])
    assert tot == pytest.approx(expect) and cnt == 2.0
    tot, _, _ = loss_terms(np.array([[50.0]]), np.array([[0.0]]), LossSpec("y", "bce"), None)
    assert tot == pytest.approx(50.0)


def test_xent_is_stable_and_labels_equal_one_hot() -> None:
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, 900.0, 1.0]])  # (B, O) vector output
    labels = np.array([0, 2])
    tot, _, g = loss_terms(z, labels, LossSpec("y", "xent"), None)
    assert math.isfinite(tot) and np.all(np.isfinite(g))
    assert tot == pytest.approx(0.0 + 899.0)
    tot2, _, g2 = loss_terms(z, np.eye(3)[labels], LossSpec("y", "xent"), None)
    assert tot2 == pytest.approx(tot) and np.allclose(g, g2)
    lsm = log_softmax(np.array([1e308, 1e308]))
    assert np.allclose(lsm, np.log(0.5))


def test_loss_errors() -> None:
    with pytest.raises(RnnUserError, match="(?s)E801.*outside 0..2"):
        loss_terms(np.zeros((2, 3)), np.array([0, 3]), LossSpec("y", "xent"), None)
    with pytest.raises(RnnUserError, match=r"(?s)E801.*shape \(2, 4\)"):
        loss_terms(np.zeros((2, 3)), np.zeros((2, 4)), LossSpec("y", "mse"), None)
    with pytest.raises(RnnUserError, match="(?s)E802.*unknown loss 'hinge'"):
        parse_loss("y=hinge")
    with pytest.raises(RnnUserError, match="(?s)E802"):
        parse_loss("y")
    assert parse_loss("y=ce:last*0.5") == LossSpec("y", "xent", "last", None, 0.5)
    # labels at padded steps may be anything (e.g. -1)
    tot, cnt, _ = loss_terms(np.zeros((2, 1, 3)), np.array([[1], [-1]]), LossSpec("y", "xent"),
                             np.array([1]))
    assert cnt == 1.0 and tot == pytest.approx(math.log(3))


# optimizers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts,torch_name,torch_opts", [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, "SGD",
     {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("sgd", {}, "SGD", {}),
    ("adam", {"weight_decay": 0.01}, "Adam", {"weight_decay": 0.01}),
    ("adamw", {"weight_decay": 0.1}, "AdamW", {"weight_decay": 0.1}),
    ("rmsprop", {"momentum": 0.5}, "RMSprop", {"momentum": 0.5, "eps": 1e-8}),
])
def test_optimizers_match_pytorch(name: str, opts: dict, torch_name: str,
                                  torch_opts: dict) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p0 = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    grads = [{k: rng.normal(size=v.shape) for k, v in p0.items()} for _ in range(5)]
    params = {k: v.copy() for k, v in p0.items()}
    opt = make_optimizer(name, **opts)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in p0.items()}
    topt = getattr(torch.optim, torch_name)(list(tp.values()), lr=0.05, **torch_opts)
    for g in grads:
        opt.step(params, g, 0.05)
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
    for k in p0:
        np.testing.assert_allclose(params[k], tp[k].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_optimizer_errors() -> None:
    with pytest.raises(RnnUserError, match="(?s)E805.*unknown optimizer"):
        make_optimizer("lbfgs")
    with pytest.raises(RnnUserError, match="(?s)E805.*has no option 'momentum'"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(RnnUserError, match="Nesterov"):
        make_optimizer("sgd", nesterov=True)


def test_clipping() -> None:
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert global_norm(g) == 5.0
    assert clip_by_global_norm(g, 1.0) == 5.0
    assert global_norm(g) == pytest.approx(1.0)
    g2 = {"a": np.array([3.0, -0.5, -7.0])}
    clip_by_global_norm(g2, 100.0)
    assert list(g2["a"]) == [3.0, -0.5, -7.0]  # under the limit: untouched
    clip_by_value(g2, 1.0)
    assert list(g2["a"]) == [1.0, -0.5, -1.0]


def test_schedules() -> None:
    s = make_schedule("step", 1.0, step_size=10, gamma=0.5)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]
    c = make_schedule("cosine", 1.0, total_steps=100, warmup=10, min_lr=0.1)
    assert c(0) == pytest.approx(0.1) and c(9) == pytest.approx(1.0)
    assert c(10) == pytest.approx(1.0) and c(55) == pytest.approx(0.55)
    assert c(100) == pytest.approx(0.1) and c(1000) == pytest.approx(0.1)
    w = make_schedule("constant", 0.2, warmup=4)
    assert [w(i) for i in range(5)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    with pytest.raises(RnnUserError, match="(?s)E805"):
        make_schedule("step", 1.0)
    with pytest.raises(RnnUserError, match="(?s)E805"):
        make_schedule("linear", 1.0)


# data ------------------------------------------------------------------------------------------
def test_npz_and_batches(tmp_path: Path) -> None:
    d = make_data()
    np.savez(tmp_path / "d.npz", **d)
    ds = load_data(tmp_path / "d.npz")
    assert ds.n == 24 and set(ds.arrays) == {"x", "y", "cls", "z"}
    b = make_batch(ds, np.array([3, 1]), [("x", "seq")], {"y": "y", "c": "cls"}, {"c"})
    assert b.inputs["x"].shape == (6, 2, 3) and b.inputs["x"].flags.c_contiguous
    np.testing.assert_array_equal(b.inputs["x"][:, 0], d["x"][3])
    np.testing.assert_array_equal(b.lengths["x"], d["lengths"][[3, 1]])
    assert b.targets["y"].shape == (6, 2, 2) and b.targets["c"].shape == (6, 2)
    tr, va = split(ds, 0.25, seed=3)
    assert va is not None and (tr.n, va.n) == (18, 6)
    tr2, va2 = split(ds, 0.25, seed=3)
    assert va2 is not None and tr.fingerprint() == tr2.fingerprint()


def test_data_errors(tmp_path: Path, ref_model: rnnlang.Model) -> None:
    d = make_data()
    with pytest.raises(RnnUserError, match="(?s)E801.*no array 'x'.*it holds"):
        fit(ref_model, {"inp": d["x"], "y": d["y"]}, ["y=mse"])
    with pytest.raises(RnnUserError, match=r"(?s)E801.*input 'x' has shape \(24, 3\); expected "
                       r"\(N, T, F\)"):
        fit(ref_model, {"x": d["x"][:, 0], "y": d["y"]}, ["y=mse"])
    with pytest.raises(RnnUserError, match="(?s)E801.*no target array 'q' for output 'y'"):
        fit(ref_model, d, [LossSpec("y", target="q")])
    with pytest.raises(RnnUserError, match="(?s)E801.*disagree on the number of examples"):
        fit(ref_model, {"x": d["x"], "y": d["y"][:5]}, ["y=mse"])
    with pytest.raises(RnnUserError, match="(?s)E801.*dtype <U1"):
        fit(ref_model, {"x": np.full((2, 3, 3), "a"), "y": d["y"][:2]}, ["y=mse"])
    with pytest.raises(RnnUserError, match="(?s)E801.*lengths for 'x' must lie between 1 and T"):
        fit(ref_model, dict(d, lengths=d["lengths"] + 5), ["y=mse"])
    with pytest.raises(RnnUserError, match="(?s)E802.*no output 'w'"):
        fit(ref_model, d, ["w=mse"])
    # pickled object arrays are never loaded
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(RnnUserError, match="(?s)E801.*not a readable .npz"):
        load_data(tmp_path / "p.npz")
    (tmp_path / "pk.npz").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(RnnUserError, match="(?s)E801"):
        load_data(tmp_path / "pk.npz")
    with pytest.raises(RnnUserError, match="(?s)E801.*must end in .npz or .csv"):
        (tmp_path / "d.txt").write_text("")
        load_data(tmp_path / "d.txt")
    with pytest.raises(RnnUserError, match="(?s)E801.*no such file"):
        load_data(tmp_path / "none.npz")


def test_csv(tmp_path: Path) -> None:
    p = tmp_path / "ts.csv"
    p.write_text("sequence,x.0,x.1,y\na,1,2,0\na,3,4,1\nb,5,6,1\na,7,8,2\n")
    ds = load_data(p)
    assert ds.arrays["x"].shape == (2, 3, 2) and list(ds.lengths[""]) == [3, 1]
    np.testing.assert_array_equal(ds.arrays["x"][0, :, 1], [2, 4, 8])
    np.testing.assert_array_equal(ds.arrays["y"][1, :, 0], [1, 0, 0])
    b = make_batch(ds, np.arange(2), [("x", "seq")], {"y": "y"}, {"y"})
    assert b.targets["y"].dtype == np.int64 and b.targets["y"].shape == (3, 2)
    q = tmp_path / "w.csv"
    q.write_text("x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(7)))
    w = load_data(q, window=3)
    assert w.arrays["x"].shape == (3, 3, 1) and list(w.lengths[""]) == [3, 3, 1]
    q.write_text("x,y\n1,2\n3,oops\n")
    with pytest.raises(RnnUserError, match=r"w.csv:3: column 'y' holds 'oops'"):
        load_data(q)


# fit / evaluate / predict -----------------------------------------------------------------------
def test_fit_reduces_loss_and_is_deterministic(ref_model: rnnlang.Model) -> None:
    d = make_data()
    cfg = TrainConfig(epochs=6, batch_size=8, lr=0.02, val_fraction=0.25, seed=4,
                      clip_norm=5.0, schedule="cosine", warmup=2)
    before = evaluate(ref_model, d, ["y=mse"])["loss"]
    p0 = {k: v.copy() for k, v in ref_model.params.items()}
    r1 = fit(ref_model, d, ["y=mse", "z=mse:last"], cfg)
    after = evaluate(ref_model, d, ["y=mse"])["loss"]
    assert after < before and len(r1.history) == 6 and r1.steps == 18
    p1 = {k: v.copy() for k, v in ref_model.params.items()}
    ref_model.params = {k: v.copy() for k, v in p0.items()}
    r2 = fit(ref_model, d, ["y=mse", "z=mse:last"], cfg)
    assert r1.history == r2.history
    for k in p1:
        assert np.array_equal(p1[k], ref_model.params[k])


def test_cpu_training_is_bitwise_reproducible(cache_dir: Path) -> None:
    d = make_data(n=16)
    runs = []
    for _ in range(2):
        m = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, seed=1)
        fit(m, d, ["y=mse"],
            TrainConfig(epochs=2, batch_size=4, lr=0.01, seed=2))
        runs.append(m.params)
    for k in runs[0]:
        assert runs[0][k].tobytes() == runs[1][k].tobytes()


def test_xent_classifier_learns(ref_model: rnnlang.Model) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5, 3))
    d = {"x": x, "lab": (x[:, :, 0] > 0).astype(np.int64)}
    spec = LossSpec("y", "xent", target="lab")
    before = evaluate(ref_model, d, [spec])["y"]
    fit(ref_model, d, [spec], TrainConfig(epochs=15, batch_size=8, lr=0.05))
    assert evaluate(ref_model, d, [spec])["y"] < 0.6 * before


def test_predict_and_evaluate(ref_model: rnnlang.Model) -> None:
    d = make_data(n=10)
    out = predict(ref_model, {"x": d["x"], "lengths": d["lengths"]}, batch_size=3)
    assert out["y"].shape == (10, 6, 2) and out["z"].shape == (10, 2)
    full = ref_model.forward({"x": np.swapaxes(d["x"], 0, 1)}, lengths=d["lengths"])
    np.testing.assert_allclose(out["y"], np.swapaxes(full["y"], 0, 1))
    ev = evaluate(ref_model, d, ["y=mse", "z=mse*2"], batch_size=4)
    fn = make_loss_fn([LossSpec("y")], {"y": np.swapaxes(d["y"], 0, 1)}, {"y": d["lengths"]})
    assert ev["y"] == pytest.approx(fn(full)[0])
    assert ev["loss"] == pytest.approx(ev["y"] + 2 * ev["z"])


def test_nonfinite_loss_stops_without_checkpoint(tmp_path: Path,
                                                 ref_model: rnnlang.Model) -> None:
    d = make_data(n=8)
    d["y"] = d["y"].copy()
    d["y"][5, 0, 0] = np.nan
    ck = tmp_path / "c.npz"
    cfg = TrainConfig(epochs=2, batch_size=8, checkpoint=ck, checkpoint_every=1)
    with pytest.raises(RnnUserError, match="(?s)E803.*the loss is not finite at epoch 1, step 1"):
        fit(ref_model, d, ["y=mse"], cfg)
    assert not ck.exists() and not list(tmp_path.iterdir())
    d["y"][:, 0, 0] = 0
    d["y"][6, 1, 1] = np.inf
    p0 = {k: v.copy() for k, v in ref_model.params.items()}
    r = fit(ref_model, d, ["y=mse"], TrainConfig(epochs=2, batch_size=4, seed=1,
                                                 on_nonfinite="skip"))
    assert r.skipped_steps == 2 and r.steps == 4
    assert all(np.all(np.isfinite(v)) for v in ref_model.params.values())
    assert any(not np.array_equal(p0[k], ref_model.params[k]) for k in p0)


def test_exploding_parameters_stop(ref_model: rnnlang.Model) -> None:
    d = make_data(n=8)
    d["y"] = d["y"] * 1e200
    with pytest.raises(RnnUserError, match="(?s)E803"):
        fit(ref_model, d, ["y=mse"], TrainConfig(epochs=2, optimizer="sgd", lr=1e300))


def test_early_stopping_restores_best(ref_model: rnnlang.Model) -> None:
    d = make_data()
    r = fit(ref_model, d, ["y=mse"], TrainConfig(epochs=50, batch_size=4, lr=0.5,
                                                 optimizer="sgd", val_fraction=0.3,
                                                 patience=2))
    assert r.stopped_early and r.epochs < 50
    vals = [h["val_loss"] for h in r.history]
    assert r.best_val == min(vals) and vals[-1] > min(vals)
    _, va = split(from_arrays(d), 0.3, 0)
    assert va is not None
    assert evaluate(ref_model, va, ["y=mse"], batch_size=4)["loss"] == pytest.approx(r.best_val)


# CLI --------------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> tuple[int, str]:
    from rnnlang.cli import _common
    from rnnlang.cli_train import add_commands
    p = argparse.ArgumentParser(prog="rnnc")
    sub = p.add_subparsers(dest="cmd")
    handlers = add_commands(sub, _common)
    assert set(handlers) == {"train", "eval"}
    args = p.parse_args(argv)
    out = io.StringIO()
    code = args.handler(args, out)
    return code, out.getvalue()


def test_cli_train_eval(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    spec = tmp_path / "m.rnn"
    spec.write_text(SPEC)
    np.savez(tmp_path / "d.npz", **make_data())
    common = ["--target", "reference", "--dtype", "float64"]
    code, text = _cli(["train", str(spec), "--data", str(tmp_path / "d.npz"), "--loss", "y=mse",
                       "--loss", "z=mse:last", "--epochs", "3", "--batch-size", "8",
                       "--val-split", "0.25", "--lr", "0.01", "--optimizer", "sgd",
                       "--momentum", "0.9", "--checkpoint", str(tmp_path / "ck.npz"),
                       "-o", str(tmp_path / "p.npz"), *common])
    assert code == 0 and "trained m: 9 steps, 3 epochs" in text and "best val_loss" in text
    assert "epoch 3/3" in capsys.readouterr().err
    for params in ("p.npz", "ck.npz"):
        code, text = _cli(["eval", str(spec), "--params", str(tmp_path / params), "--data",
                           str(tmp_path / "d.npz"), *common])
        assert code == 0 and "y (mse, step):" in text and "z (mse, step):" in text
    with pytest.raises(RnnUserError, match="(?s)E805.*has no option 'momentum'"):
        _cli(["train", str(spec), "--data", str(tmp_path / "d.npz"), "--momentum", "0.9",
              *common])
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3)))
    with pytest.raises(RnnUserError, match="(?s)E801.*no target for any output"):
        _cli(["train", str(spec), "--data", str(tmp_path / "bad.npz"), *common])
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3)), y=np.zeros((4, 3, 2)))
    with pytest.raises(RnnUserError, match="(?s)E801.*input 'x' has shape"):
        _cli(["train", str(spec), "--data", str(tmp_path / "bad.npz"), *common])


def test_cli_run_data(tmp_path: Path) -> None:
    from rnnlang.cli import _common
    from rnnlang.cli_train import add_run_options, cmd_run_data
    spec = tmp_path / "m.rnn"
    spec.write_text(SPEC)
    d = make_data(n=5)
    np.savez(tmp_path / "d.npz", x=d["x"], lengths=d["lengths"])
    p = argparse.ArgumentParser()
    p.add_argument("file", type=Path)
    add_run_options(p)
    _common(p)
    args = p.parse_args([str(spec), "--data", str(tmp_path / "d.npz"), "--predictions",
                         str(tmp_path / "pred.npz"), "--target", "reference"])
    out = io.StringIO()
    assert cmd_run_data(args, out) == 0
    assert "output y: shape (5, 6, 2)" in out.getvalue()
    with np.load(tmp_path / "pred.npz") as f:
        assert f["z"].shape == (5, 2)


S2S = """
model s2s(F = 2, V = 3, H = 4) {
  input src: seq[F]
  input tgt: seq[V]
  param Wy[H, V] = glorot
  param Wc[H, 1] = glorot
  enc = lstm(H) over src
  dec = lstm(H) over tgt from enc
  output logits = dec @ Wy
  output code = enc @ Wc
}
"""


def test_output_lengths_follow_the_time_axis() -> None:
    """Only the source has lengths: the encoder-side output is masked by them, the decoder's
    (on the target's axis) is not; `lengths:<output>` overrides."""
    m = rnnlang.compile(S2S, target="reference", dtype="float64")
    rng = np.random.default_rng(0)
    n, ts, tt = 3, 5, 4
    ls = np.array([2, 5, 3])
    d = {"src": rng.normal(size=(n, ts, 2)), "tgt": rng.normal(size=(n, tt, 3)),
         "logits": rng.normal(size=(n, tt, 3)), "code": rng.normal(size=(n, ts, 1)),
         "lengths:src": ls}
    outs = m.forward({"src": np.ascontiguousarray(d["src"].transpose(1, 0, 2)),
                      "tgt": np.ascontiguousarray(d["tgt"].transpose(1, 0, 2))},
                     lengths={"src": ls})
    lo = outs["logits"].transpose(1, 0, 2)
    co = outs["code"].transpose(1, 0, 2)
    want_logits = np.mean((lo - d["logits"]) ** 2)  # every target step counts
    valid = np.arange(ts)[None, :] < ls[:, None]
    want_code = np.sum(((co - d["code"])[..., 0] ** 2) * valid) / valid.sum()
    got = evaluate(m, d, ["logits=mse", "code=mse"])
    np.testing.assert_allclose(got["logits"], want_logits, rtol=1e-12)
    np.testing.assert_allclose(got["code"], want_code, rtol=1e-12)
    lt = np.array([4, 1, 2])
    got = evaluate(m, dict(d, **{"lengths:logits": lt}), ["logits=mse"])
    vt = np.arange(tt)[None, :] < lt[:, None]
    np.testing.assert_allclose(
        got["logits"], np.sum(((lo - d["logits"]) ** 2).sum(-1) * vt) / (vt.sum() * 3),
        rtol=1e-12)
