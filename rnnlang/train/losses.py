"""Losses on model outputs, masked by sequence lengths.

Each loss gives ``(sum, count, d sum / d output)``: the value is ``sum / count`` (a mean over
the valid positions), so that evaluation can add sums and counts over batches exactly. All
arithmetic is float64; cotangents are cast by the model to its dtype.

Kinds: ``mse`` (mean over valid elements), ``xent`` (softmax cross-entropy through a stable
log-softmax; targets are integer class indices or probability rows; mean over valid positions),
``bce`` (binary cross-entropy with logits; targets in [0, 1]; mean over valid elements).
Reductions for sequence outputs ``(T, B, O)``: ``step`` (every valid step, t < length) and
``last`` (the output at the last valid step, t = length - 1). Vector outputs ``(B, O)`` have
one position per sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rnnlang.diagnostics import RnnUserError, error

KINDS = ("mse", "xent", "bce")
REDUCTIONS = ("step", "last")
ALIASES = {"ce": "xent", "cross-entropy": "xent", "softmax-xent": "xent", "bce-logits": "bce",
           "per-step": "step", "sequence": "last"}


@dataclass(frozen=True)
class LossSpec:
    """The loss of one output: ``kind`` on ``output`` against the array ``target``."""

    output: str
    kind: str = "mse"
    reduction: str = "step"
    target: str | None = None  # array name in the data; default: the output's name
    weight: float = 1.0

    @property
    def target_name(self) -> str:
        return self.target or self.output


def parse_loss(text: str) -> LossSpec:
    """``OUT=KIND[:REDUCTION][*WEIGHT]``, e.g. ``y=xent``, ``y=mse:last``, ``z=bce*0.5``."""
    out, sep, rest = text.partition("=")
    if not sep or not out.strip():
        raise error("E802", f"cannot read loss '{text}'",
                    None, hint="write OUTPUT=KIND[:step|last], e.g. y=xent or y=mse:last")
    weight = 1.0
    if "*" in rest:
        rest, _, w = rest.partition("*")
        try:
            weight = float(w)
        except ValueError:
            raise error("E802", f"loss weight '{w}' is not a number", None) from None
        if not np.isfinite(weight) or weight < 0:
            raise error("E802", f"loss weight must be finite and >= 0, got {w}", None)
    kind, _, red = rest.partition(":")
    kind = ALIASES.get(kind.strip(), kind.strip()) or "mse"
    red = ALIASES.get(red.strip(), red.strip()) or "step"
    if kind not in KINDS:
        raise error("E802", f"unknown loss '{kind}'", None, hint="one of " + ", ".join(KINDS))
    if red not in REDUCTIONS:
        raise error("E802", f"unknown reduction '{red}'", None,
                    hint="step (every valid step) or last (the last valid step)")
    return LossSpec(out.strip(), kind, red, None, weight)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Stable along the last axis: z - max - log(sum(exp(z - max)))."""
    zmax = np.max(z, axis=-1, keepdims=True)
    s = z - zmax
    return s - np.log(np.sum(np.exp(s), axis=-1, keepdims=True))


def _select_last(out: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return out[lengths - 1, np.arange(out.shape[1])]


def _positions(out: np.ndarray, spec: LossSpec, lengths: np.ndarray | None,
               target: np.ndarray, from_step: int = 0,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The predictions, targets and 0/1 mask over positions (leading axes) the loss sees."""
    z = out.astype(np.float64)
    if out.ndim == 3:
        t_steps, batch = out.shape[:2]
        lens = lengths if lengths is not None else np.full(batch, t_steps, np.int64)
        if spec.reduction == "last":
            per_step = target.ndim == 3 or (spec.kind == "xent" and target.ndim == 2
                                            and np.issubdtype(target.dtype, np.integer))
            tgt = _select_last(target, lens) if per_step else target
            return _select_last(z, lens), tgt, None
        steps = np.arange(t_steps)[:, None]
        mask = ((steps >= from_step) & (steps < lens[None, :])).astype(np.float64)
        return z, target, mask
    return z, target, None


def loss_terms(out: np.ndarray, target: np.ndarray, spec: LossSpec,
               lengths: np.ndarray | None, from_step: int = 0,
               ) -> tuple[float, float, np.ndarray]:
    """``(sum, count, d sum / d out)`` for one output of one batch (time-major arrays).
    ``from_step``: per-step losses skip the steps before it (truncated BPTT scores each step
    in one update only)."""
    z, y, mask = _positions(out, spec, lengths, target, from_step)
    pos_shape = z.shape[:-1]
    m = np.ones(pos_shape) if mask is None else mask
    if spec.kind == "xent":
        if np.issubdtype(y.dtype, np.integer):
            if y.shape != pos_shape:
                raise _shape(spec, y.shape, pos_shape, "class indices")
            classes = z.shape[-1]
            valid = m > 0
            if np.any(valid & ((y < 0) | (y >= classes))):
                raise error("E801", f"target '{spec.target_name}' has class indices outside "
                            f"0..{classes - 1}", None)
            idx = np.where(valid, y, 0)
            onehot = np.zeros_like(z)
            np.put_along_axis(onehot, idx[..., None], 1.0, axis=-1)
        else:
            if y.shape != z.shape:
                raise _shape(spec, y.shape, z.shape, "class probabilities")
            onehot = np.where(m[..., None] > 0, y.astype(np.float64), 0.0)
        lsm = log_softmax(z)
        total = float(-np.sum(m[..., None] * onehot * lsm))
        p = np.exp(lsm)
        grad = (p * onehot.sum(-1, keepdims=True) - onehot) * m[..., None]
        count = float(m.sum())
    else:
        if np.issubdtype(y.dtype, np.integer) and spec.kind == "mse":
            y = y.astype(np.float64)
        if y.shape != z.shape:
            raise _shape(spec, y.shape, z.shape, "values")
        y = np.where(m[..., None] > 0, y.astype(np.float64), 0.0)
        mm = m[..., None]
        if spec.kind == "mse":
            d = (z - y) * mm
            total = float(np.sum(d * d))
            grad = 2.0 * d
        else:  # bce with logits: max(z, 0) - z y + log(1 + exp(-|z|))
            elem = np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))
            total = float(np.sum(elem * mm))
            sig = np.where(z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))),
                           np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z))))
            grad = (sig - y) * mm
        count = float(m.sum()) * z.shape[-1]
    if out.ndim == 3 and spec.reduction == "last":
        lens = lengths if lengths is not None else np.full(out.shape[1], out.shape[0], np.int64)
        full = np.zeros(out.shape, np.float64)
        full[lens - 1, np.arange(out.shape[1])] = grad
        grad = full
    return total, count, grad


def _shape(spec: LossSpec, got: tuple[int, ...], want: tuple[int, ...], what: str) -> RnnUserError:
    return error("E801", f"target '{spec.target_name}' for output '{spec.output}' has shape "
                 f"{got} (time-major), the {spec.kind} loss with reduction '{spec.reduction}' "
                 f"needs {what} of shape {want}", None,
                 hint="targets are stored batch-first in data files: (N, T, O) per step, "
                 "(N, O) for last-step losses; integer class indices drop the last axis")


def make_loss_fn(specs: Sequence[LossSpec], targets: Mapping[str, np.ndarray],
                 lengths: Mapping[str, np.ndarray | None], from_step: int = 0) -> Callable[
        [dict[str, np.ndarray]], tuple[float, dict[str, np.ndarray]]]:
    """A function for `Model.value_and_grad`: weighted sum of each output's mean loss."""

    def fn(outs: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        value = 0.0
        cots: dict[str, np.ndarray] = {}
        for s in specs:
            total, count, grad = loss_terms(outs[s.output], targets[s.output], s,
                                            lengths.get(s.output), from_step)
            scale = s.weight / max(count, 1.0)
            value += scale * total
            g = grad * scale
            cots[s.output] = cots[s.output] + g if s.output in cots else g
        return value, cots

    return fn
