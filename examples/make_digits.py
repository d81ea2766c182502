"""Data for the digits example (examples/digits.rnn), and its accuracy.

``data/digits.csv.gz`` is the UCI "Optical Recognition of Handwritten Digits" test set as
shipped with scikit-learn (``sklearn/datasets/data/digits.csv.gz``, copied unchanged): 1797
rows of 64 pixel counts in 0..16 (an 8x8 image, row by row) followed by the digit 0-9.
Each image becomes a sequence of its 8 rows, each row a step of 8 pixels scaled to [0, 1].
A fixed permutation (seed 0) holds out 360 images for testing; the other 1437 train.

    python examples/make_digits.py              # data/digits.npz, data/digits_test.npz
    python examples/make_digits.py --evaluate   # also train digits.rnn, print test accuracy

Files (batch-first): ``x`` (N, 8, 8) float32 (step = image row), ``y`` (N,) int64.
"""

from __future__ import annotations

import argparse
import gzip
import io
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
N_TEST = 360


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """Images (1797, 8, 8) uint8 in 0..16 and labels (1797,) int64, in the file's order."""
    with gzip.open(DATA / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def build() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The training and test arrays."""
    images, labels = load_source()
    perm = np.random.default_rng(0).permutation(len(labels))
    x = (images.astype(np.float32) / 16.0)[perm]
    y = labels[perm].astype(np.int64)
    return {"x": x[N_TEST:], "y": y[N_TEST:]}, {"x": x[:N_TEST], "y": y[:N_TEST]}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def train_and_test(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                   epochs: int | None = None, cache_dir: str | Path | None = None,
                   seed: int | None = None,
                   ) -> dict[str, float]:
    """Train digits.rnn with its train section on ``train``; accuracy on ``test``."""
    import rnnlang
    from rnnlang.train.loop import config_from_section, fit, predict, spec_section

    spec = HERE / "digits.rnn"
    sec = spec_section(spec, None)
    cfg = config_from_section(sec, epochs=epochs, seed=seed)
    m = rnnlang.compile(spec, seed=cfg.seed, cache_dir=cache_dir)
    start = time.perf_counter()
    fit(m, train, sec["losses"], cfg)
    seconds = time.perf_counter() - start
    guess = predict(m, {"x": test["x"]})["y"].argmax(axis=1)
    return {"accuracy": float(np.mean(guess == test["y"])), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evaluate", action="store_true", help="train digits.rnn and test it")
    ap.add_argument("--epochs", type=int, help="override the train section's epochs")
    ap.add_argument("--seed", type=int, help="override the train section's seed")
    args = ap.parse_args(argv)
    train, test = build()
    write(DATA / "digits.npz", train)
    write(DATA / "digits_test.npz", test)
    print(f"wrote {DATA / 'digits.npz'} ({len(train['y'])}) and digits_test.npz "
          f"({len(test['y'])})")
    if args.evaluate:
        r = train_and_test(train, test, args.epochs, seed=args.seed)
        print(f"trained in {r['seconds']:.1f} s; test accuracy {100 * r['accuracy']:.1f}% "
              f"on {len(test['y'])} images (chance 10%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
