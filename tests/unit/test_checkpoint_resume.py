"""Training checkpoints: a run killed with SIGKILL (between steps or in the middle of writing
a checkpoint) and resumed ends bitwise-identical to an uninterrupted run; damaged, truncated,
pickled or mismatched checkpoints give clear errors; non-finite checkpoints are never written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rnnlang
from rnnlang import RnnUserError
from rnnlang.train import TrainConfig, fit, load_checkpoint
from rnnlang.train.checkpoint import Checkpoint, save_checkpoint
from tests.unit.test_train import SPEC, make_data

ROOT = Path(__file__).resolve().parents[2]

CFG = dict(epochs=4, batch_size=5, lr=0.01, checkpoint_every=3, val_fraction=0.2,
           patience=10, seed=7, optimizer="adam", clip_norm=1.0, schedule="cosine", warmup=3)

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import rnnlang
    from rnnlang.train import TrainConfig, fit
    mode, data, ckpt, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = TrainConfig(checkpoint=ckpt, **{cfg!r})
    m = rnnlang.compile({spec!r}, target="reference", dtype="float64")
    with np.load(data) as f:
        d = {{n: f[n] for n in f.files}}
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def cb(info):
        if mode == "step" and info["step"] == k:
            die()
    if mode == "save":  # the k-th fsync: the temp file is written, not yet renamed
        calls = [0]
        real = os.fsync
        def fsync(fd):
            calls[0] += 1
            if calls[0] == k:
                die()
            real(fd)
        os.fsync = fsync
    fit(m, d, ["y=mse", "z=mse:last"], cfg, resume=True, callback=cb)
    print("finished")
""")


def _run(tmp: Path, mode: str, k: int) -> subprocess.CompletedProcess[str]:
    script = tmp / "train.py"
    script.write_text(SCRIPT.format(cfg=CFG, spec=SPEC))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run([sys.executable, str(script), mode, str(tmp / "d.npz"),
                           str(tmp / "ck.npz"), str(k)], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    m = rnnlang.compile(SPEC, target="reference", dtype="float64")
    r = fit(m, make_data(n=25), ["y=mse", "z=mse:last"], TrainConfig(**CFG))  # type: ignore[arg-type]
    assert r.steps == 16 and len(r.history) == 4
    return m.params, r.history


def _resume(ck: Path) -> tuple[dict[str, np.ndarray], list[dict[str, float]], int | None]:
    m = rnnlang.compile(SPEC, target="reference", dtype="float64")
    r = fit(m, make_data(n=25), ["y=mse", "z=mse:last"],
            TrainConfig(checkpoint=ck, **CFG), resume=True)  # type: ignore[arg-type]
    return m.params, r.history, r.resumed_from


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path: Path, uninterrupted) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "d.npz", **make_data(n=25))
    p = _run(tmp_path, "step", 7)  # killed at step 7 (epoch 2 of 4 batches each)
    assert p.returncode == -signal.SIGKILL, p.stderr
    st = load_checkpoint(tmp_path / "ck.npz").meta["state"]
    assert (st["step"], st["epoch"], st["batch"]) == (6, 1, 2)  # saved mid-epoch
    p = _run(tmp_path, "step", 10)  # resumed, then killed again at step 10 (checkpoint at 9)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert load_checkpoint(tmp_path / "ck.npz").meta["state"]["step"] == 9
    params, history, resumed_from = _resume(tmp_path / "ck.npz")
    assert resumed_from == 9
    _same(params, uninterrupted[0])
    assert history == uninterrupted[1]


def test_sigkill_mid_save_then_resume_is_exact(tmp_path: Path, uninterrupted) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "d.npz", **make_data(n=25))
    # two fsyncs per checkpoint (file, folder): the 5th is inside the 3rd save (at step 6)
    p = _run(tmp_path, "save", 5)
    assert p.returncode == -signal.SIGKILL, p.stderr
    leftovers = [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
    assert leftovers, "the partial temp file should be left behind"
    ck = load_checkpoint(tmp_path / "ck.npz")  # the previous good checkpoint
    assert ck.meta["state"]["step"] == 4  # step 3 and the end of epoch 1 (step 4) were saved
    params, history, resumed_from = _resume(tmp_path / "ck.npz")
    assert resumed_from == 4
    _same(params, uninterrupted[0])
    assert history == uninterrupted[1]


def test_crash_and_resume_on_cpu_target_is_exact(tmp_path: Path, cache_dir: Path) -> None:
    d = make_data(n=12)
    cfg = dict(epochs=3, batch_size=4, lr=0.02, seed=3, optimizer="rmsprop",
               checkpoint_every=2)

    def model() -> rnnlang.Model:
        return rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir)

    m0 = model()
    fit(m0, d, ["y=mse"], TrainConfig(**cfg))  # type: ignore[arg-type]

    class Crash(Exception):
        pass

    def crash(info: dict[str, object]) -> None:
        if info["step"] == 5:
            raise Crash

    ck = tmp_path / "ck.npz"
    with pytest.raises(Crash):
        fit(model(), d, ["y=mse"], TrainConfig(checkpoint=ck, **cfg),  # type: ignore[arg-type]
            callback=crash)
    m2 = model()
    r = fit(m2, d, ["y=mse"], TrainConfig(checkpoint=ck, **cfg), resume=True)  # type: ignore[arg-type]
    assert r.resumed_from == 4
    _same(m2.params, m0.params)


def test_more_epochs_continue_exactly(tmp_path: Path) -> None:
    d = make_data(n=10)
    base = dict(batch_size=4, lr=0.01, seed=1, optimizer="sgd",
                optimizer_options={"momentum": 0.9, "nesterov": True})
    m0 = rnnlang.compile(SPEC, target="reference", dtype="float64")
    fit(m0, d, ["y=mse"], TrainConfig(epochs=4, **base))  # type: ignore[arg-type]
    ck = tmp_path / "ck.npz"
    m1 = rnnlang.compile(SPEC, target="reference", dtype="float64")
    fit(m1, d, ["y=mse"], TrainConfig(epochs=2, checkpoint=ck, **base))  # type: ignore[arg-type]
    m2 = rnnlang.compile(SPEC, target="reference", dtype="float64")
    r = fit(m2, d, ["y=mse"], TrainConfig(epochs=4, checkpoint=ck, **base),  # type: ignore[arg-type]
            resume=True)
    assert r.resumed_from == 6 and r.steps == 12
    _same(m2.params, m0.params)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    ck = tmp_path / "ck.npz"
    m = rnnlang.compile(SPEC, target="reference", dtype="float64")
    fit(m, make_data(n=8), ["y=mse"], TrainConfig(epochs=1, batch_size=4, checkpoint=ck))
    return ck


def test_checkpoint_contents(checkpoint: Path) -> None:
    with np.load(checkpoint, allow_pickle=False) as f:
        names = set(f.files)
    assert {"param/enc.W", "param/Wy", "opt/m/Wy", "opt/v/enc.U", "data/perm"} <= names
    ck = load_checkpoint(checkpoint)
    meta = ck.meta
    assert meta["kind"] == "rnnlang-train-checkpoint" and meta["model"] == "m"
    assert meta["rnnlang"] == rnnlang.__version__ and meta["numpy"] == np.__version__
    assert len(meta["ir_hash"]) == 20 and meta["dims"] == {"H": 4, "F": 3, "O": 2}
    assert meta["state"]["epoch"] == 1 and meta["state"]["step"] == 2
    assert meta["optimizer"]["name"] == "adam" and meta["optimizer"]["t"] == 2
    assert "bit_generator" in meta["rng"]
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")]


def _resume_with(ck: Path, spec: str = SPEC, data: dict | None = None, **over: object
                 ) -> None:
    m = rnnlang.compile(spec, target="reference", dtype="float64")
    cfg = dict(epochs=2, batch_size=4, checkpoint=ck)
    cfg.update(over)
    fit(m, make_data(n=8) if data is None else data, ["y=mse"],
        TrainConfig(**cfg), resume=True)  # type: ignore[arg-type]


def test_damaged_checkpoints_give_clear_errors(checkpoint: Path) -> None:
    good = checkpoint.read_bytes()
    for damaged in (good[: len(good) // 2], b"garbage" * 10, b""):
        checkpoint.write_bytes(damaged)
        with pytest.raises(RnnUserError, match="E611.*not a valid rnnlang parameter file"):
            _resume_with(checkpoint)
    import pickle
    checkpoint.write_bytes(pickle.dumps({"param/Wy": np.zeros((4, 2))}))
    with pytest.raises(RnnUserError, match="E611"):
        _resume_with(checkpoint)
    np.savez(checkpoint, **{"param/Wy": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(RnnUserError, match="E611"):
        _resume_with(checkpoint)


def test_mismatched_checkpoints_give_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(RnnUserError, match="(?s)E804.*trained with H = 4, the model has H = 5"):
        _resume_with(checkpoint, SPEC.replace("H = 4", "H = 5"))
    with pytest.raises(RnnUserError, match="(?s)E804.*different model"):
        _resume_with(checkpoint, SPEC.replace("gru(H)", "lstm(H)"))
    with pytest.raises(RnnUserError, match="(?s)E804.*other data"):
        _resume_with(checkpoint, data=make_data(n=8, seed=5))
    with pytest.raises(RnnUserError, match="(?s)E804.*other training options \\(lr, seed\\)"):
        _resume_with(checkpoint, lr=0.5, seed=3)
    with pytest.raises(RnnUserError, match="(?s)E804.*other training options \\(optimizer"):
        _resume_with(checkpoint, optimizer="sgd", optimizer_options={})
    # a plain parameter file is not a training checkpoint, and vice versa
    m = rnnlang.compile(SPEC, target="reference", dtype="float64")
    m.save(tmp_path / "p.npz")
    with pytest.raises(RnnUserError, match="(?s)E804.*not a training checkpoint"):
        _resume_with(tmp_path / "p.npz")
    with pytest.raises(RnnUserError, match="E604"):
        m.load(checkpoint)


def test_nonfinite_checkpoint_is_never_written(tmp_path: Path) -> None:
    m = rnnlang.compile(SPEC, target="reference", dtype="float64")
    params = dict(m.params, Wy=np.full((4, 2), np.nan))
    with pytest.raises(RnnUserError, match="E803.*'Wy' is not finite"):
        save_checkpoint(tmp_path / "c.npz", m, Checkpoint(params, {}, {}))
    assert not list(tmp_path.iterdir())
