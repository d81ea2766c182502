"""The classification examples train and beat chance on held-out data (examples/README.md).

examples/gestures.rnn: a GRU classifies noisy pen trajectories of five shapes (chance 20%).
A reduced run (600 training gestures, 20 epochs) must reach at least 70% on 300 held-out
gestures (the full run reaches about 97%).

examples/digits.rnn: conv1d + two LSTMs read 8x8 handwritten digits row by row (chance 10%).
A reduced run (all 1437 training images, 4 epochs) must reach at least 70% on the 360
held-out images (the full run reaches about 98%). scikit-learn is not needed: the data are
committed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GESTURES_MIN_ACCURACY = 0.70  # chance: 0.20
DIGITS_MIN_ACCURACY = 0.70    # chance: 0.10


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gesture_data() -> None:
    mod = _script("make_gestures")
    d = mod.make(100, 0)
    x, lengths, y = d["x"], d["lengths"], d["y"]
    assert x.shape == (100, 40, 2) and x.dtype == np.float32
    assert lengths.dtype == np.int64 and y.dtype == np.int64
    assert lengths.min() >= 20 and lengths.max() <= 40
    assert np.bincount(y, minlength=5).tolist() == [20] * 5  # balanced
    steps = np.arange(40)[None, :]
    assert not x[steps >= lengths[:, None]].any()  # zero padding past each length
    assert (np.abs(x[steps < lengths[:, None]]).sum(axis=-1) > 0).all()
    np.testing.assert_array_equal(mod.make(100, 0)["x"], x)  # fixed seeds
    assert not np.array_equal(mod.make(100, 1)["x"], x)


def test_gestures_beat_chance(cache_dir: Path) -> None:
    mod = _script("make_gestures")
    r = mod.train_and_test(mod.make(600, 0), mod.make(300, 1), epochs=20, cache_dir=cache_dir)
    assert r["accuracy"] >= GESTURES_MIN_ACCURACY, r
    confusion = r["confusion"]
    assert confusion.sum() == 300 and confusion.sum(axis=1).tolist() == [60] * 5


def test_digits_data_matches_its_script() -> None:
    """The committed .npz files are what make_digits.py builds from the bundled CSV."""
    mod = _script("make_digits")
    images, labels = mod.load_source()
    assert images.shape == (1797, 8, 8) and images.max() == 16 and images.min() == 0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    train, test = mod.build()
    for name, arrays in (("digits.npz", train), ("digits_test.npz", test)):
        with np.load(EXAMPLES / "data" / name, allow_pickle=False) as f:
            assert sorted(f.files) == ["x", "y"]
            for k in ("x", "y"):
                np.testing.assert_array_equal(f[k], arrays[k])
    assert train["x"].shape == (1437, 8, 8) and test["x"].shape == (360, 8, 8)
    assert set(np.unique(test["y"])) == set(range(10))


def test_digits_cnn_rnn_beats_chance(cache_dir: Path) -> None:
    mod = _script("make_digits")
    train, test = mod.build()
    r = mod.train_and_test(train, test, epochs=4, cache_dir=cache_dir)
    assert r["accuracy"] >= DIGITS_MIN_ACCURACY, r
