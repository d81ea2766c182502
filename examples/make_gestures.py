"""Data for the gesture-recognition example (examples/gestures.rnn), and its accuracy.

Each example is a noisy 2-D pen trajectory of one of five shapes: circle, line, zigzag,
spiral and square. Every trajectory has a random scale, rotation, direction of travel,
speed profile (points bunch up where the pen is slow), jitter and length (20 to 40 points);
shorter ones are zero-padded to 40 steps and their true length is stored in ``lengths``.
The model reads the pen's displacement between points, ``x[t] = 4 * (p[t+1] - p[t])``, so
the shape's position does not matter; the label is the class index ``y``.

    python examples/make_gestures.py              # build/gestures/gestures{,_test}.npz
    python examples/make_gestures.py --evaluate   # also train gestures.rnn and print the
                                                  # held-out accuracy and confusion matrix

Files (batch-first): ``x`` (N, 40, 2) float32, ``lengths`` (N,) int64, ``y`` (N,) int64.
Generated from fixed seeds (training 0, test 1); ``build/`` is not committed.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "gestures"
CLASSES = ("circle", "line", "zigzag", "spiral", "square")
T_MAX, T_MIN = 40, 20
N_TRAIN, N_TEST = 1000, 500


def _shape(k: int, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points of class ``k`` at curve parameters ``u`` in [0, 1], unit size, shape (n, 2)."""
    name = CLASSES[k]
    if name == "circle":
        a = 2 * np.pi * rng.uniform(0.85, 1.05) * u
        return np.stack([np.cos(a), np.sin(a)], axis=-1)
    if name == "line":
        bend = rng.uniform(-0.1, 0.1)
        return np.stack([2 * u, bend * np.sin(np.pi * u)], axis=-1)
    if name == "zigzag":
        teeth = rng.integers(3, 6)
        tri = 2 * np.abs((teeth * u) % 1.0 - 0.5)  # 0..1 triangle wave
        return np.stack([2 * u, rng.uniform(0.3, 0.6) * tri], axis=-1)
    if name == "spiral":
        a = 2 * np.pi * rng.uniform(1.5, 2.5) * u
        r = 0.15 + 0.85 * u
        return np.stack([r * np.cos(a), r * np.sin(a)], axis=-1)
    # square: four straight sides, the pen going round once
    s = (4 * u) % 4.0
    side, f = np.minimum(s.astype(int), 3), s - np.minimum(s.astype(int), 3)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float)
    return corners[side] + f[:, None] * (corners[side + 1] - corners[side])


def make(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` gestures, the classes in turn (balanced)."""
    rng = np.random.default_rng([7, seed])
    x = np.zeros((n, T_MAX, 2), dtype=np.float32)
    lengths = rng.integers(T_MIN, T_MAX + 1, size=n)
    y = np.arange(n) % len(CLASSES)
    for i in range(n):
        pts = lengths[i] + 1  # L displacements need L + 1 points
        u = np.linspace(0.0, 1.0, pts) ** rng.uniform(0.6, 1.6)  # uneven speed
        p = _shape(int(y[i]), u, rng)
        if rng.random() < 0.5:
            p[:, 1] = -p[:, 1]  # the other direction of travel
        rot = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(rot), np.sin(rot)
        p = p @ np.array([[c, s], [-s, c]]) * rng.uniform(0.5, 1.5)
        p += rng.normal(0.0, 0.03, size=p.shape)
        x[i, : lengths[i]] = 4 * np.diff(p, axis=0)
    perm = rng.permutation(n)
    return {"x": x[perm], "lengths": lengths[perm].astype(np.int64),
            "y": y[perm].astype(np.int64)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def build(out: Path = OUT, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    write(out / "gestures.npz", make(n_train, 0))
    write(out / "gestures_test.npz", make(n_test, 1))


def train_and_test(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                   epochs: int | None = None, cache_dir: str | Path | None = None,
                   seed: int | None = None,
                   ) -> dict[str, object]:
    """Train gestures.rnn with its train section on ``train``; accuracy on ``test``."""
    import rnnlang
    from rnnlang.train.loop import config_from_section, fit, predict, spec_section

    spec = HERE / "gestures.rnn"
    sec = spec_section(spec, None)
    cfg = config_from_section(sec, epochs=epochs, seed=seed)
    m = rnnlang.compile(spec, seed=cfg.seed, cache_dir=cache_dir)
    start = time.perf_counter()
    fit(m, train, sec["losses"], cfg)
    seconds = time.perf_counter() - start
    guess = predict(m, {"x": test["x"], "lengths": test["lengths"]})["y"].argmax(axis=1)
    k = len(CLASSES)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (test["y"], guess), 1)
    return {"accuracy": float(np.mean(guess == test["y"])), "confusion": confusion,
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--evaluate", action="store_true", help="train gestures.rnn and test it")
    ap.add_argument("--epochs", type=int, help="override the train section's epochs")
    ap.add_argument("--seed", type=int, help="override the train section's seed")
    args = ap.parse_args(argv)
    build(args.out)
    print(f"wrote {args.out / 'gestures.npz'} ({N_TRAIN}) and gestures_test.npz ({N_TEST})")
    if args.evaluate:
        r = train_and_test(make(N_TRAIN, 0), make(N_TEST, 1), args.epochs, seed=args.seed)
        print(f"trained in {r['seconds']:.1f} s; held-out accuracy {100 * r['accuracy']:.1f}% "
              f"(chance {100 / len(CLASSES):.0f}%)")
        print("confusion (rows: true class, columns: predicted):")
        print("        " + " ".join(f"{c[:6]:>6}" for c in CLASSES))
        for name, row in zip(CLASSES, r["confusion"], strict=True):  # type: ignore[arg-type]
            print(f"{name:>7} " + " ".join(f"{v:6d}" for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
