"""Data for the date-normalization example (examples/dates.rnn), and its accuracy.

Each example is one calendar date between 1950-01-01 and 2049-12-31 written by a human in
one of eleven formats ("march 3, 1998", "mar 3, 1998", "3 march 1998", "3 mar 1998",
"tuesday, march 3, 1998", "tue 3 mar 1998", "march 3rd, 1998", "03/03/1998" (month first),
"3.3.1998" (day first), "1998-03-03", "3/3/98") and its ISO form "1998-03-03".

    python examples/make_dates.py              # build/dates/dates{,_test}.npz
    python examples/make_dates.py --evaluate   # also train dates.rnn and print the
                                               # held-out accuracy of greedy decoding

Files (batch-first): ``x`` (N, 30, 41) float32 one-hot source characters (zero rows past
``lengths:x``), ``lengths:x`` (N,) int64, ``y_in`` (N, 10, 12) float32 one-hot decoder input
(the start symbol, then the first 9 ISO characters: teacher forcing), ``logits`` (N, 10) int64
ISO character indices (the targets), ``lengths:logits`` (N,) int64, all 10: the decoder's
steps are masked by their own lengths, not by the source's. Generated from fixed seeds
(training 0, test 1); ``build/`` is not committed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "dates"
SRC_CHARS = " ,-./0123456789abcdefghijklmnopqrstuvwxyz"  # V = 41
TGT_CHARS = "0123456789-"  # K = 12 with the start symbol
START = len(TGT_CHARS)
T_SRC, T_TGT = 30, 10
N_TRAIN, N_TEST = 6000, 1000
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
FIRST, LAST = dt.date(1950, 1, 1).toordinal(), dt.date(2049, 12, 31).toordinal()


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def human(d: dt.date, fmt: int) -> str:
    """Date ``d`` in human format number ``fmt`` (0 to 10)."""
    month, mon, day = MONTHS[d.month - 1], MONTHS[d.month - 1][:3], DAYS[d.weekday()]
    return [
        f"{month} {d.day}, {d.year}",
        f"{mon} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{d.day} {mon} {d.year}",
        f"{day}, {month} {d.day}, {d.year}",
        f"{day[:3]} {d.day} {mon} {d.year}",
        f"{month} {_ordinal(d.day)}, {d.year}",
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.day}.{d.month}.{d.year}",
        d.isoformat(),
        f"{d.month}/{d.day}/{d.year % 100:02d}",  # two-digit years: 1950-2049
    ][fmt]


N_FORMATS = 11


def make_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (human, ISO) pairs, the formats in turn."""
    rng = np.random.default_rng([11, seed])
    days = rng.integers(FIRST, LAST + 1, size=n)
    pairs = [(human(dt.date.fromordinal(int(o)), i % N_FORMATS),
              dt.date.fromordinal(int(o)).isoformat()) for i, o in enumerate(days)]
    return [pairs[i] for i in rng.permutation(n)]


def encode_source(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot ``(N, T_SRC, 41)`` float32 and lengths ``(N,)`` int64."""
    x = np.zeros((len(texts), T_SRC, len(SRC_CHARS)), dtype=np.float32)
    for i, s in enumerate(texts):
        x[i, np.arange(len(s)), [SRC_CHARS.index(c) for c in s]] = 1.0
    return x, np.array([len(s) for s in texts], dtype=np.int64)


def make(n: int, seed: int) -> dict[str, np.ndarray]:
    pairs = make_pairs(n, seed)
    x, lengths = encode_source([h for h, _ in pairs])
    target = np.array([[TGT_CHARS.index(c) for c in iso] for _, iso in pairs], dtype=np.int64)
    prev = np.concatenate([np.full((n, 1), START), target[:, :-1]], axis=1)
    y_in = np.eye(START + 1, dtype=np.float32)[prev]
    return {"x": x, "lengths:x": lengths, "y_in": y_in, "logits": target,
            "lengths:logits": np.full(n, T_TGT, dtype=np.int64)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def build(out: Path = OUT, n_train: int = N_TRAIN, n_test: int = N_TEST) -> None:
    write(out / "dates.npz", make(n_train, 0))
    write(out / "dates_test.npz", make(n_test, 1))


def greedy_decode(params: dict[str, np.ndarray], x: np.ndarray, lengths: np.ndarray,
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """ISO character indices ``(N, T_TGT)`` for one-hot sources ``x`` (batch-first), each
    step's argmax fed back as the next step's input. ``params``: the trained `dates` model's
    parameters, copied by name into the `encode` and `decode_step` models."""
    import rnnlang

    spec = HERE / "dates.rnn"
    h = params["Wy"].shape[0]
    enc = rnnlang.compile(spec, model="encode", stateful=True, cache_dir=cache_dir, H=h)
    dec = rnnlang.compile(spec, model="decode_step", stateful=True, cache_dir=cache_dir, H=h)
    for m in (enc, dec):
        for name in m.params:
            m.params[name] = params[name]
    _, state = enc.forward({"x": np.ascontiguousarray(x.transpose(1, 0, 2))},
                           lengths=lengths, return_state=True)
    carry = {"dec.h0": state["enc.h0"], "dec.c0": state["enc.c0"]}
    n = x.shape[0]
    prev = np.full(n, START)
    out = np.zeros((n, T_TGT), dtype=np.int64)
    eye = np.eye(START + 1, dtype=np.float32)
    for t in range(T_TGT):
        o, carry = dec.forward({"y_in": eye[prev][None]}, initial=carry, return_state=True)
        prev = o["logits"][0, :, :START].argmax(axis=1)  # the start symbol is never output
        out[:, t] = prev
    return out


def decode_text(indices: np.ndarray) -> list[str]:
    return ["".join(TGT_CHARS[i] for i in row) for row in indices]


def train_and_test(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                   epochs: int | None = None, cache_dir: str | Path | None = None,
                   seed: int | None = None, **sizes: int) -> dict[str, Any]:
    """Train dates.rnn with its train section on ``train``; greedy decoding on ``test``:
    exact-match accuracy (whole dates) and per-character accuracy, with the teacher-forced
    per-character accuracy for comparison."""
    import rnnlang
    from rnnlang.train.loop import config_from_section, fit, predict, spec_section

    spec = HERE / "dates.rnn"
    sec = spec_section(spec, "dates")
    cfg = config_from_section(sec, epochs=epochs, seed=seed)
    m = rnnlang.compile(spec, model="dates", seed=cfg.seed, cache_dir=cache_dir, **sizes)
    start = time.perf_counter()
    fit(m, train, sec["losses"], cfg)
    seconds = time.perf_counter() - start
    forced = predict(m, {"x": test["x"], "lengths:x": test["lengths:x"],
                         "y_in": test["y_in"]})["logits"][..., :START].argmax(axis=-1)
    start = time.perf_counter()
    guess = greedy_decode(m.params, test["x"], test["lengths:x"], cache_dir)
    decode_seconds = time.perf_counter() - start
    right = guess == test["logits"]
    return {"exact": float(right.all(axis=1).mean()), "char": float(right.mean()),
            "forced_char": float(np.mean(forced == test["logits"])), "guess": guess, "model": m,
            "seconds": seconds, "decode_seconds": decode_seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--evaluate", action="store_true", help="train dates.rnn and test it")
    ap.add_argument("--epochs", type=int, help="override the train section's epochs")
    ap.add_argument("--seed", type=int, help="override the train section's seed")
    args = ap.parse_args(argv)
    build(args.out)
    print(f"wrote {args.out / 'dates.npz'} ({N_TRAIN}) and dates_test.npz ({N_TEST})")
    if args.evaluate:
        test_pairs = make_pairs(N_TEST, 1)
        r = train_and_test(make(N_TRAIN, 0), make(N_TEST, 1), args.epochs, seed=args.seed)
        print(f"trained in {r['seconds']:.1f} s; greedy decoding of {N_TEST} held-out dates "
              f"in {r['decode_seconds']:.2f} s")
        print(f"exact match {100 * r['exact']:.1f}%, characters {100 * r['char']:.1f}% "
              f"(teacher-forced characters {100 * r['forced_char']:.1f}%)")
        guesses = decode_text(r["guess"])
        for (src, iso), got in list(zip(test_pairs, guesses, strict=True))[:8]:
            print(f"  {src!r:>28} -> {got}  {'ok' if got == iso else 'expected ' + iso}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
