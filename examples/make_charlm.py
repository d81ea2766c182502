"""Data for the character-level language model (examples/charlm.rnn), its held-out
perplexity against the unigram baseline, and text sampled from it one character at a time.

The text is Abraham Lincoln's Gettysburg Address (1863, the "Bliss copy"; public domain),
``data/gettysburg.txt``. The vocabulary is every character of the whole text, sorted. The
first 85% of the characters train the model and the last 15% are held out. Training
sequences are windows of ``T`` characters, one every ``STRIDE`` characters; the input ``x``
at step t is the one-hot vector of character t and the target ``y`` is the index of
character t + 1. Held-out windows do not overlap.

    python examples/make_charlm.py             # build/charlm/charlm{,_test}.npz
    python examples/make_charlm.py --sample    # also train charlm.rnn, report the held-out
                                               # cross-entropy and sample text

Files (batch-first): ``x`` (N, T, V) float32 one-hot, ``y`` (N, T) int64. ``build/`` is not
committed.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TEXT = HERE / "data" / "gettysburg.txt"
OUT = HERE.parent / "build" / "charlm"
T, STRIDE, TRAIN_FRACTION = 32, 8, 0.85


def load_text(path: Path = TEXT) -> str:
    return path.read_text(encoding="utf-8")


def vocabulary(text: str) -> str:
    return "".join(sorted(set(text)))


def split(text: str, fraction: float = TRAIN_FRACTION) -> tuple[str, str]:
    cut = int(len(text) * fraction)
    return text[:cut], text[cut:]


def encode(text: str, vocab: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab)}
    return np.array([index[c] for c in text], dtype=np.int64)


def windows(ids: np.ndarray, vocab_size: int, t: int = T, stride: int = STRIDE
            ) -> dict[str, np.ndarray]:
    """Windows of ``t`` inputs and their next-character targets, one every ``stride``."""
    starts = np.arange(0, len(ids) - t, stride)
    idx = starts[:, None] + np.arange(t)[None, :]
    x = np.eye(vocab_size, dtype=np.float32)[ids[idx]]
    return {"x": x, "y": ids[idx + 1]}


def unigram_entropy(train: str, test: str | None = None) -> float:
    """Nats per character: the entropy of ``train``'s character frequencies, or (with
    ``test``) their cross-entropy on ``test``, add-one smoothed over ``train + test``'s
    characters."""
    if test is None:
        _, counts = np.unique(list(train), return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())
    vocab = vocabulary(train + test)
    counts = np.bincount(encode(train, vocab), minlength=len(vocab)) + 1.0
    p = counts / counts.sum()
    return float(-np.log(p[encode(test, vocab)]).mean())


def build(text: str | None = None, t: int = T, stride: int = STRIDE
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """Training and held-out windows, and the vocabulary."""
    text = load_text() if text is None else text
    vocab = vocabulary(text)
    train, test = split(text)
    return (windows(encode(train, vocab), len(vocab), t, stride),
            windows(encode(test, vocab), len(vocab), t, t), vocab)


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def train(data: dict[str, np.ndarray], vocab_size: int, epochs: int | None = None,
          cache_dir: str | Path | None = None, seed: int | None = None,
          hidden: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train charlm.rnn with its train section on ``data``; the model and its settings."""
    import rnnlang
    from rnnlang.train.loop import config_from_section, fit, spec_section

    spec = HERE / "charlm.rnn"
    sec = spec_section(spec, None)
    cfg = config_from_section(sec, epochs=epochs, seed=seed)
    sizes = {"V": vocab_size} | ({"H": hidden} if hidden is not None else {})
    m = rnnlang.compile(spec, seed=cfg.seed, cache_dir=cache_dir, **sizes)
    start = time.perf_counter()
    fit(m, data, sec["losses"], cfg)
    return m, {"seconds": time.perf_counter() - start, "losses": sec["losses"]}


def cross_entropy(model: Any, data: dict[str, np.ndarray], losses: Any) -> float:
    """Mean next-character cross-entropy (nats) over every position of ``data``."""
    from rnnlang.train.loop import evaluate

    return float(evaluate(model, data, losses)["loss"])


def sample(params: dict[str, np.ndarray], vocab: str, n: int, prime: str = "T",
           temperature: float = 1.0, seed: int = 0,
           cache_dir: str | Path | None = None) -> str:
    """``n`` characters after ``prime``, one at a time: a stateful copy of the model reads
    ``prime``, then each sampled character is fed back with the carried LSTM state."""
    import rnnlang

    sizes = {"V": len(vocab), "H": int(params["Wy"].shape[0])}
    m = rnnlang.compile(HERE / "charlm.rnn", stateful=True, cache_dir=cache_dir, **sizes)
    for k, v in params.items():
        m.params[k][...] = v
    eye = np.eye(len(vocab), dtype=np.float32)
    rng = np.random.default_rng(seed)
    outs, state = m.forward({"x": eye[encode(prime, vocab)][:, None, :]}, return_state=True)
    logits = outs["y"][-1, 0].astype(np.float64)
    chars = []
    for _ in range(n):
        z = logits / max(temperature, 1e-6)
        p = np.exp(z - z.max())
        k = int(rng.choice(len(vocab), p=p / p.sum()))
        chars.append(vocab[k])
        outs, state = m.forward({"x": eye[k][None, None, :]}, initial=state,
                                return_state=True)
        logits = outs["y"][0, 0].astype(np.float64)
    return "".join(chars)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--sample", action="store_true",
                    help="train charlm.rnn (or --params), report held-out loss, sample text")
    ap.add_argument("--params", type=Path, help="load these parameters instead of training")
    ap.add_argument("--save", type=Path, help="save the trained parameters here")
    ap.add_argument("--epochs", type=int, help="override the train section's epochs")
    ap.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--length", type=int, default=300, help="characters to sample")
    ap.add_argument("--prime", default="Four score")
    args = ap.parse_args(argv)
    text = load_text()
    train_data, test_data, vocab = build(text)
    write(args.out / "charlm.npz", train_data)
    write(args.out / "charlm_test.npz", test_data)
    print(f"wrote {args.out / 'charlm.npz'} ({len(train_data['x'])} windows of {T}) and "
          f"charlm_test.npz ({len(test_data['x'])}); {len(text)} characters, "
          f"vocabulary {len(vocab)}")
    if args.sample:
        if args.params is not None:
            import rnnlang

            m = rnnlang.compile(HERE / "charlm.rnn", V=len(vocab))
            m.load(args.params)
            from rnnlang.train.losses import parse_loss

            losses: Any = [parse_loss("y=xent:step")]
        else:
            m, info = train(train_data, len(vocab), args.epochs, seed=args.seed)
            losses = info["losses"]
            print(f"trained in {info['seconds']:.1f} s")
            if args.save is not None:
                m.save(args.save)
        tr, te = split(text)
        h_uni, x_uni = unigram_entropy(tr), unigram_entropy(tr, te)
        for name, d in (("training", train_data), ("held-out", test_data)):
            ce = cross_entropy(m, d, losses)
            print(f"{name} cross-entropy {ce:.3f} nats/char = {ce / math.log(2):.3f} bits, "
                  f"perplexity {math.exp(ce):.2f}")
        print(f"unigram baseline: entropy of the training frequencies {h_uni:.3f} nats "
              f"({h_uni / math.log(2):.3f} bits, perplexity {math.exp(h_uni):.2f}); "
              f"on the held-out text {x_uni:.3f} nats (perplexity {math.exp(x_uni):.2f})")
        out = sample(m.params, vocab, args.length, args.prime, args.temperature, args.seed)
        print(f"sample (temperature {args.temperature}, seed {args.seed}):")
        print(args.prime + out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
