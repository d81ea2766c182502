"""Data for the adding problem (examples/adding.rnn) at several sequence lengths, and the
experiment that compares the Elman network with the LSTM on it.

Each sequence has T steps of two features: a value drawn uniformly from [0, 1] and a marker.
Exactly two steps are marked (1.0): one among the first max(1, T // 10) steps, one in the
second half. The target is the sum of the two marked values (its mean is 1 and its variance
1/6, so always answering 1 scores a mean squared error of about 0.167). The first marker is at
least 0.9 T steps before the end, so the network must carry it that far: gradients through an
Elman network vanish over such lags, an LSTM's do not.

    python examples/make_adding.py                 # build/adding/T{10,25,50,100}[_test].npz
    python examples/make_adding.py --lags 50       # one length
    python examples/make_adding.py --table         # also train both models at each length and
                                                   # print the table of examples/README.md

Files (batch-first): ``x`` (N, T, 2) float32, ``y`` (N, 1) float32. Generated from a fixed
seed per length, so they are the same on every machine. ``build/`` is not committed.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "adding"
LAGS = (10, 25, 50, 100)
N_TRAIN, N_TEST = 2000, 500
TOLERANCE = 0.04  # an answer counts as right within this of the target (as in the 1997 paper)


def make(t: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` adding-problem sequences of ``t`` steps."""
    if t < 2:
        raise ValueError("sequences need at least 2 steps")
    rng = np.random.default_rng([t, seed])
    values = rng.uniform(0.0, 1.0, size=(n, t))
    first = rng.integers(0, max(1, t // 10), size=n)
    second = rng.integers(max(t // 2, 1), t, size=n)
    marks = np.zeros((n, t))
    rows = np.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    x = np.stack([values, marks], axis=-1)
    return {"x": x.astype(np.float32), "y": y[:, None].astype(np.float32)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def build(lags: tuple[int, ...], out: Path, n_train: int = N_TRAIN, n_test: int = N_TEST,
          ) -> None:
    for t in lags:
        write(out / f"T{t}.npz", make(t, n_train, 0))
        write(out / f"T{t}_test.npz", make(t, n_test, 1))


def run(model: str, t: int, out: Path, epochs: int | None = None,
        cache_dir: str | None = None) -> dict[str, float]:
    """Train ``model`` of adding.rnn with its train section on T{t}.npz; test on T{t}_test."""
    import rnnlang
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import config_from_section, evaluate, fit, predict, spec_section

    spec = HERE / "adding.rnn"
    sec = spec_section(spec, model)
    cfg = config_from_section(sec, epochs=epochs)
    m = rnnlang.compile(spec, model=model, seed=cfg.seed, cache_dir=cache_dir)
    train, test = load_data(out / f"T{t}.npz"), load_data(out / f"T{t}_test.npz")
    start = time.perf_counter()
    fit(m, train, sec["losses"], cfg)
    seconds = time.perf_counter() - start
    mse = evaluate(m, test, sec["losses"])["loss"]
    err = np.abs(predict(m, test)["y"][:, 0] - test.arrays["y"][:, 0])
    return {"mse": float(mse), "accuracy": float(np.mean(err < TOLERANCE)),
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lags", type=int, nargs="+", default=list(LAGS), metavar="T")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true", help="train both models at each length")
    ap.add_argument("--epochs", type=int, help="override the train sections' epochs")
    args = ap.parse_args(argv)
    build(tuple(args.lags), args.out)
    print(f"wrote {len(args.lags)} lengths to {args.out}")
    if args.table:
        print("| T | model | test MSE | accuracy (abs error < 0.04) | train time |")
        print("| --- | --- | --- | --- | --- |")
        for t in args.lags:
            for model in ("adding_elman", "adding_lstm"):
                r = run(model, t, args.out, args.epochs)
                print(f"| {t} | {model.removeprefix('adding_')} | {r['mse']:.4f} | "
                      f"{100 * r['accuracy']:.1f}% | {r['seconds']:.0f} s |")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
