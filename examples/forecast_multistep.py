"""Multi-step sunspot forecasts with the one-step model of forecast.rnn, fed its own output.

From each forecast origin (the last year whose number is known) a stateful copy of the model
reads the previous WARMUP years, then predicts 1, 2, ..., H years ahead by feeding each
prediction back as the next input, carrying the GRU state. The origins are 1948 to 2008 - H,
so every forecast year is held out (1949-2008; the parameters were trained on targets up to
1948). Baselines: persistence ("every future year equals the origin's") and the seasonal
naive forecast ("year t equals year t - 11", one solar cycle earlier).

    python examples/forecast_multistep.py                    # trains forecast.rnn first (~7 s)
    rnnc train examples/forecast.rnn -o sunspots.params.npz
    python examples/forecast_multistep.py --params sunspots.params.npz --horizon 10
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SPEC = HERE / "forecast.rnn"
WARMUP = 24  # years read before the origin: the training windows' length
CYCLE = 11  # years: the seasonal naive baseline's lag


def _data_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_forecast_data",
                                                  HERE / "make_forecast_data.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def series() -> tuple[np.ndarray, np.ndarray]:
    """(years, numbers / 100) of the whole series 1700-2008."""
    mod = _data_module()
    years, values = mod.load_series()
    return years, values / mod.SCALE


def origins(years: np.ndarray, horizon: int) -> np.ndarray:
    """Indices of the origin years: 1948 (the last training target) to 2008 - horizon."""
    first = int(np.searchsorted(years, _data_module().LAST_TRAIN_TARGET))
    return np.arange(first, len(years) - horizon)


def forecast(params: dict[str, np.ndarray], v: np.ndarray, at: np.ndarray, horizon: int,
             cache_dir: str | Path | None = None) -> np.ndarray:
    """``(len(at), horizon)`` forecasts: for origin index o, the years o+1 .. o+horizon,
    all origins in one batch."""
    import rnnlang

    m = rnnlang.compile(SPEC, stateful=True, cache_dir=cache_dir,
                        H=int(params["Wy"].shape[0]))
    for k, a in params.items():
        m.params[k][...] = a
    warm = np.stack([v[o - WARMUP + 1:o + 1] for o in at], axis=1)[..., None]  # (W, B, 1)
    outs, state = m.forward({"x": warm.astype(m.dtype)}, return_state=True)
    step = outs["y"][-1]  # (B, 1): the forecast of year o + 1
    preds = [step[:, 0]]
    for _ in range(horizon - 1):
        outs, state = m.forward({"x": step[None]}, initial=state, return_state=True)
        step = outs["y"][-1]
        preds.append(step[:, 0])
    return np.stack(preds, axis=1).astype(np.float64)


def errors(params: dict[str, np.ndarray], horizon: int = 10,
           cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Mean squared error by horizon (index h - 1) over the held-out origins, on the /100
    scale, of the model and both baselines."""
    years, v = series()
    at = origins(years, horizon)
    truth = np.stack([v[o + 1:o + 1 + horizon] for o in at])
    persist = np.repeat(v[at][:, None], horizon, axis=1)
    seasonal = np.stack([v[o + 1 - CYCLE:o + 1 - CYCLE + horizon] for o in at])
    model = forecast(params, v, at, horizon, cache_dir)
    return {name: ((pred - truth) ** 2).mean(axis=0)
            for name, pred in (("model", model), ("persistence", persist),
                               ("seasonal", seasonal))}


def train(epochs: int | None = None, cache_dir: str | Path | None = None
          ) -> dict[str, np.ndarray]:
    """forecast.rnn trained with its train section (optionally fewer epochs)."""
    import rnnlang
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import config_from_section, fit, spec_section

    sec = spec_section(SPEC)
    cfg = config_from_section(sec, epochs=epochs)
    m = rnnlang.compile(SPEC, seed=cfg.seed, cache_dir=cache_dir)
    fit(m, load_data(HERE / sec["data"]), sec["losses"], cfg)
    return m.params


def table(err: dict[str, np.ndarray]) -> str:
    rows = ["| years ahead | model RMSE | persistence RMSE | seasonal (t-11) RMSE "
            "| model / persistence (MSE) |", "| --- | --- | --- | --- | --- |"]
    for h in range(len(err["model"])):
        rmse = {k: 100 * np.sqrt(e[h]) for k, e in err.items()}
        rows.append(f"| {h + 1} | {rmse['model']:.1f} | {rmse['persistence']:.1f} | "
                    f"{rmse['seasonal']:.1f} | {err['model'][h] / err['persistence'][h]:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, help="trained parameters (rnnc train ... -o FILE); "
                    "default: train forecast.rnn now")
    ap.add_argument("--horizon", type=int, default=10, help="years ahead (default 10)")
    args = ap.parse_args(argv)
    if not 1 <= args.horizon <= 40:
        ap.error("--horizon must be between 1 and 40")
    if args.params is not None:
        from rnnlang.checkpoint import load_arrays

        params, _ = load_arrays(args.params)  # the file rnnc train -o writes; no pickle
    else:
        params = train()
    err = errors(params, args.horizon)
    n = len(origins(series()[0], args.horizon))
    print(f"held-out forecasts from {n} origins (1948-{2008 - args.horizon}), sunspot numbers:")
    print(table(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
