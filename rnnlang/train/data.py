"""Training data: ``.npz`` and ``.csv`` files, validation splits and time-major batches.

File layout is batch-first: a sequence input ``x`` is ``(N, T, F)``, a vector input ``(N, F)``.
Optional integer ``lengths`` ``(N,)`` applies to every sequence input (or ``lengths:<input>``
to one). Targets are named after the model's outputs (or mapped to another array name):
``(N, T, O)`` per step, ``(N, O)`` per sequence; softmax cross-entropy also takes integer class
indices ``(N, T)`` or ``(N,)``. ``.npz`` files are read with ``allow_pickle=False``.

CSV (time series): a header row names the columns; column ``x`` or columns ``x.0, x.1, ...``
form the array ``x`` (features in column order). Rows are time steps. An optional
``sequence`` column groups rows into sequences (padded, with lengths); otherwise ``window``
cuts the rows into sequences of that many steps (the last one may be shorter), or the whole
file is one sequence. A column of whole numbers used as a cross-entropy target is read as
class indices.
"""

from __future__ import annotations

import csv
import hashlib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rnnlang.diagnostics import RnnUserError, error

SEQUENCE_COLUMN = "sequence"
MAX_CSV_BYTES = 1 << 30


def _bad(msg: str, hint: str | None = None) -> RnnUserError:
    return error("E801", msg, None, hint=hint)


@dataclass
class Dataset:
    """Named arrays, batch-first, plus per-sequence-input lengths."""

    arrays: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) int64; "" = all
    source: str = "<arrays>"

    def __post_init__(self) -> None:
        sizes = {k: a.shape[0] for k, a in self.arrays.items() if a.ndim >= 1}
        sizes.update({f"lengths:{k}" if k else "lengths": a.shape[0]
                      for k, a in self.lengths.items()})
        if not sizes:
            raise _bad(f"{self.source} holds no arrays")
        if any(a.ndim == 0 for a in self.arrays.values()):
            name = next(k for k, a in self.arrays.items() if a.ndim == 0)
            raise _bad(f"{self.source}: array '{name}' is a scalar; arrays are batch-first")
        if len(set(sizes.values())) != 1:
            raise _bad(f"{self.source}: arrays disagree on the number of examples: "
                       + ", ".join(f"{k} has {v}" for k, v in sorted(sizes.items())),
                       hint="every array's first axis counts examples (N)")

    @property
    def n(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def lengths_of(self, name: str) -> np.ndarray | None:
        return self.lengths.get(name, self.lengths.get(""))

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset({k: a[idx] for k, a in self.arrays.items()},
                       {k: a[idx] for k, a in self.lengths.items()}, self.source)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for group in (self.arrays, self.lengths):
            for k in sorted(group):
                a = np.ascontiguousarray(group[k])
                h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
                h.update(a.tobytes())
        return h.hexdigest()[:16]


def from_arrays(arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> Dataset:
    """A `Dataset` from named batch-first arrays (``lengths``/``lengths:<x>`` as in files)."""
    data: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        arr = np.asarray(v)
        if k == "lengths" or k.startswith("lengths:"):
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise _bad(f"{source}: '{k}' must be a 1-D integer array, got shape {arr.shape} "
                           f"of {arr.dtype}")
            lengths[k.partition(":")[2]] = arr.astype(np.int64)
            continue
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                       or arr.dtype == bool) or np.iscomplexobj(arr):
            raise _bad(f"{source}: array '{k}' has dtype {arr.dtype}; only real numbers are "
                       "accepted")
        data[k] = arr
    return Dataset(data, lengths, source)


def load_data(path: str | Path, *, window: int | None = None) -> Dataset:
    """Read a ``.npz`` or ``.csv`` data file (see the module docstring for the layout)."""
    p = Path(path)
    if not p.is_file():
        raise _bad(f"cannot read data file {p}: " + ("no such file" if not p.exists()
                                                      else "not a regular file"))
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p)
    if suffix == ".csv":
        return _load_csv(p, window)
    raise _bad(f"data file {p} must end in .npz or .csv")


def _load_npz(p: Path) -> Dataset:
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise _bad(f"{p} is not a readable .npz file ({exc})",
                   hint="it may be truncated or corrupted; pickled arrays are never loaded") \
            from None
    return from_arrays(arrays, str(p))


def _load_csv(p: Path, window: int | None) -> Dataset:
    if window is not None and window < 1:
        raise _bad("--window must be >= 1")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise _bad(f"{p} is larger than {MAX_CSV_BYTES} bytes")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _bad(f"cannot read {p}: {exc}") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise _bad(f"{p}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    groups: dict[str, list[int]] = {}
    seq_col = None
    for j, h in enumerate(header):
        if h == SEQUENCE_COLUMN:
            seq_col = j
            continue
        name = h.split(".", 1)[0]
        if not name:
            raise _bad(f"{p}: column {j + 1} has no name")
        groups.setdefault(name, []).append(j)
    values = np.empty((len(rows) - 1, len(header)), np.float64)
    ids: list[str] = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise _bad(f"{p}:{i}: {len(r)} fields, the header has {len(header)}")
        for j, c in enumerate(r):
            if j == seq_col:
                ids.append(c.strip())
                continue
            try:
                values[i - 2, j] = float(c)
            except ValueError:
                raise _bad(f"{p}:{i}: column '{header[j]}' holds '{c}', not a number") from None
    n_rows = values.shape[0]
    if seq_col is not None:
        order: dict[str, list[int]] = {}
        for i, s in enumerate(ids):
            order.setdefault(s, []).append(i)
        spans = list(order.values())
    elif window is not None:
        spans = [list(range(s, min(s + window, n_rows))) for s in range(0, n_rows, window)]
    else:
        spans = [list(range(n_rows))]
    lens = np.array([len(s) for s in spans], np.int64)
    t_max = int(lens.max())
    arrays: dict[str, np.ndarray] = {}
    for name, cols in groups.items():
        out = np.zeros((len(spans), t_max, len(cols)))
        for b, rows_b in enumerate(spans):
            out[b, : len(rows_b)] = values[np.ix_(rows_b, cols)]
        arrays[name] = out
    lengths = {"": lens} if len(set(lens.tolist())) > 1 else {}
    return Dataset(arrays, lengths, str(p))


def split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """A deterministic validation split: ``fraction`` of the examples, chosen by ``seed``."""
    if not 0 <= fraction < 1:
        raise _bad(f"the validation fraction must be in [0, 1), got {fraction}")
    k = int(round(data.n * fraction))
    if fraction > 0 and k == 0:
        k = 1
    if k == 0:
        return data, None
    if k >= data.n:
        raise _bad(f"a validation split of {fraction} leaves no training examples "
                   f"({data.n} in all)")
    perm = np.random.default_rng([seed, 0x5EED]).permutation(data.n)
    return data.subset(np.sort(perm[k:])), data.subset(np.sort(perm[:k]))


@dataclass
class Batch:
    """One time-major batch: model inputs, lengths and targets by output name."""

    inputs: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    size: int


def check_data(data: Dataset, inputs: Sequence[tuple[str, str]],
               targets: Mapping[str, str], *, need_targets: bool = True) -> None:
    """Clear errors for missing names, wrong ranks, dtypes or lengths before any work.
    ``inputs``: (name, "seq"|"vec"); ``targets``: output name -> array name."""
    names = sorted(data.arrays)
    for name, role in inputs:
        arr = data.arrays.get(name)
        if arr is None:
            raise _bad(f"{data.source} has no array '{name}' for the model's input",
                       hint="it holds " + (", ".join(names) or "nothing"))
        want = 3 if role == "seq" else 2
        if arr.ndim != want:
            layout = "(N, T, F)" if role == "seq" else "(N, F)"
            raise _bad(f"{data.source}: input '{name}' has shape {arr.shape}; expected "
                       f"{layout} (batch-first)")
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype,
                                                                            np.integer):
            raise _bad(f"{data.source}: input '{name}' has dtype {arr.dtype}")
        if role == "seq":
            ln = data.lengths_of(name)
            if ln is not None and (ln.min(initial=1) < 1 or ln.max(initial=1) > arr.shape[1]):
                raise _bad(f"{data.source}: lengths for '{name}' must lie between 1 and "
                           f"T = {arr.shape[1]}")
    seq_names = {n for n, r in inputs if r == "seq"}
    for k in data.lengths:
        if k and k not in seq_names and k not in targets:
            raise _bad(f"{data.source}: 'lengths:{k}' names no sequence input or output")
    if need_targets:
        for out, arr_name in targets.items():
            if arr_name not in data.arrays:
                raise _bad(f"{data.source} has no target array '{arr_name}' for output '{out}'",
                           hint="it holds " + (", ".join(names) or "nothing")
                           + "; map another array with --target-array OUTPUT=ARRAY")


def as_labels(arr: np.ndarray) -> np.ndarray:
    """Whole-number float targets with a trailing axis of 1 (e.g. from CSV) as class indices."""
    if np.issubdtype(arr.dtype, np.floating) and arr.ndim >= 2 and arr.shape[-1] == 1 and \
            np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr[..., 0].astype(np.int64)
    return arr


def make_batch(data: Dataset, idx: np.ndarray, inputs: Sequence[tuple[str, str]],
               targets: Mapping[str, str], label_targets: Iterable[str] = ()) -> Batch:
    """Rows ``idx`` of ``data`` as time-major model inputs, lengths and targets."""
    labels = set(label_targets)
    ins: dict[str, np.ndarray] = {}
    lens: dict[str, np.ndarray] = {}
    for name, role in inputs:
        arr = data.arrays[name][idx]
        ins[name] = np.ascontiguousarray(arr.transpose(1, 0, 2) if role == "seq" else arr)
        ln = data.lengths_of(name)
        if role == "seq" and ln is not None:
            lens[name] = ln[idx]
    tg: dict[str, np.ndarray] = {}
    for out, arr_name in targets.items():
        if arr_name not in data.arrays:
            continue
        arr = data.arrays[arr_name][idx]
        if out in labels:
            arr = as_labels(arr)
        if arr.ndim == 3 or (arr.ndim == 2 and out in labels
                             and np.issubdtype(arr.dtype, np.integer)):
            arr = np.swapaxes(arr, 0, 1)
        tg[out] = np.ascontiguousarray(arr)
    return Batch(ins, lens, tg, len(idx))
