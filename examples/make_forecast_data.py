"""Build examples/data/sunspots.npz and sunspots_test.npz from the yearly sunspot numbers.

Source: examples/data/sunspots_yearly.csv, the yearly mean sunspot numbers 1700-2008 of the
National Geophysical Data Center (NOAA), public domain, as shipped in statsmodels
(``statsmodels/datasets/sunspots/sunspots.csv``).

One-step forecasting: at step t the model reads this year's number ``x`` and predicts next
year's ``y``; numbers are divided by 100. Training windows cover the targets 1701-1948 (24
years each, every 4 years); the held-out file covers the targets 1949-2008, in three
non-overlapping windows of 20 years, so no held-out year is ever seen during training.

    python examples/make_forecast_data.py        # rewrites the two .npz files (deterministic)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SCALE = 100.0
LAST_TRAIN_TARGET = 1948
TRAIN_WINDOW, TRAIN_STRIDE = 24, 4
TEST_WINDOW = 20


def load_series(path: Path = DATA / "sunspots_yearly.csv") -> tuple[np.ndarray, np.ndarray]:
    """(years, sunspot numbers) from the CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    years = np.array([int(r[0]) for r in rows])
    values = np.array([float(r[1]) for r in rows])
    return years, values


def windows(x: np.ndarray, y: np.ndarray, length: int, stride: int) -> dict[str, np.ndarray]:
    starts = range(0, len(x) - length + 1, stride)
    xs = np.stack([x[s:s + length] for s in starts])[..., None]
    ys = np.stack([y[s:s + length] for s in starts])[..., None]
    return {"x": xs.astype(np.float32), "y": ys.astype(np.float32)}


def build() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, held-out) arrays: x (N, T, 1) this year, y (N, T, 1) next year, / 100."""
    years, v = load_series()
    x, y, target_year = v[:-1] / SCALE, v[1:] / SCALE, years[1:]
    cut = int(np.searchsorted(target_year, LAST_TRAIN_TARGET, side="right"))
    train = windows(x[:cut], y[:cut], TRAIN_WINDOW, TRAIN_STRIDE)
    test = windows(x[cut:], y[cut:], TEST_WINDOW, TEST_WINDOW)
    return train, test


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


if __name__ == "__main__":
    tr, te = build()
    _write(DATA / "sunspots.npz", tr)
    _write(DATA / "sunspots_test.npz", te)
    print(f"train: {tr['x'].shape[0]} windows of {tr['x'].shape[1]} years; "
          f"held out: {te['x'].shape[0]} windows of {te['x'].shape[1]} years")
