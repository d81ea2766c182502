"""fit / evaluate / predict for a compiled `rnnlang.Model`.

Determinism: shuffling uses one ``numpy.random.Generator`` seeded with ``config.seed`` (one
permutation per epoch); the validation split is chosen by the seed too. With the same data,
config and seed, training on CPU is bitwise reproducible, and a run resumed from any of its
checkpoints ends with the same parameters as an uninterrupted run (the checkpoint holds the
parameters, optimizer state, RNG state, the epoch's permutation and the batch cursor).

Truncated BPTT, TBPTT(k1, k2) (``TrainConfig.tbptt = k1``, ``tbptt_k2 = k2``, default k1; a
model compiled with ``stateful=True``): every k1 steps of a batch one optimizer update, whose
gradient flows back k2 steps from the update's last step (see `tbptt_windows`); each step's
loss counts in exactly one update. States enter each window as plain arrays (detached), computed
forward with the parameters current at the time, like an online learner's. With k1 == k2 the
windows are consecutive chunks of k1 steps and the final states of one chunk start the next.
Checkpoints then also hold the chunk cursor and the carried states, so a resume mid-batch stays
exact.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from rnnlang.diagnostics import error
from rnnlang.train.checkpoint import (
    Checkpoint,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from rnnlang.train.data import Batch, Dataset, check_data, from_arrays, make_batch, split
from rnnlang.train.losses import LossSpec, loss_terms, make_loss_fn, parse_loss
from rnnlang.train.optim import (
    clip_by_global_norm,
    clip_by_value,
    make_optimizer,
    make_schedule,
)

if TYPE_CHECKING:
    from rnnlang.api import Model

NONFINITE = ("stop", "skip")
# config fields that change the trajectory: a resume must use the same values
_TRAJECTORY = ("batch_size", "lr", "optimizer", "optimizer_options", "schedule", "step_size",
               "gamma", "warmup", "min_lr", "clip_norm", "clip_value", "seed", "val_fraction",
               "on_nonfinite")


@dataclass
class TrainConfig:
    """How to train. ``checkpoint_every`` counts steps (0: only at the end of each epoch)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    optimizer_options: dict[str, Any] = field(default_factory=dict)
    schedule: str = "constant"
    step_size: int = 0
    gamma: float = 0.1
    warmup: int = 0
    min_lr: float = 0.0
    clip_norm: float | None = None
    clip_value: float | None = None
    seed: int = 0
    val_fraction: float = 0.0
    patience: int | None = None
    checkpoint: Path | None = None
    checkpoint_every: int = 0
    on_nonfinite: str = "stop"
    max_steps: int | None = None
    restore_best: bool = True
    tbptt: int | None = None  # truncated BPTT: one update every k1 = tbptt steps ...
    tbptt_k2: int | None = None  # ... backpropagating k2 steps (default: k1)

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)

    def check(self) -> None:
        def bad(msg: str) -> None:
            raise error("E805", msg, None)
        if not 1 <= self.epochs <= 10_000_000:
            bad(f"epochs must be >= 1, got {self.epochs}")
        if not 1 <= self.batch_size <= 1_000_000:
            bad(f"the batch size must be between 1 and 1000000, got {self.batch_size}")
        if self.on_nonfinite not in NONFINITE:
            bad(f"on_nonfinite must be stop or skip, got {self.on_nonfinite}")
        for name in ("clip_norm", "clip_value"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                bad(f"{name} must be > 0, got {v}")
        if self.checkpoint_every < 0:
            bad("checkpoint_every must be >= 0")
        if self.patience is not None and self.patience < 1:
            bad("patience must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps must be >= 1")
        if self.tbptt is not None and not 1 <= self.tbptt <= 10_000_000:
            bad(f"tbptt must be >= 1, got {self.tbptt}")
        if self.tbptt_k2 is not None:
            if self.tbptt is None:
                bad("tbptt_k2 needs tbptt (k1): the number of steps between updates")
            if not 1 <= self.tbptt_k2 <= 10_000_000:
                bad(f"tbptt_k2 must be >= 1, got {self.tbptt_k2}")

    def trajectory(self) -> dict[str, Any]:
        d = asdict(self)
        out = {k: d[k] for k in _TRAJECTORY}
        if self.schedule == "cosine":
            out["epochs"], out["max_steps"] = self.epochs, self.max_steps
        if self.tbptt is not None:  # absent otherwise: older checkpoints stay resumable
            out["tbptt"] = self.tbptt
            if self.tbptt_k2 not in (None, self.tbptt):
                out["tbptt_k2"] = self.tbptt_k2
        return out


def config_from_section(section: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """A `TrainConfig` from a checked ``train { }`` section (see `spec_section`); explicit
    overrides win, None meaning "keep the section's value"."""
    fields = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in section.items() if k in fields}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def spec_section(spec: str | Path, model: str | None = None) -> dict[str, Any]:
    """The checked ``train { }`` section of ``model`` (the first model by default) in a spec."""
    from rnnlang.api import parse_program
    from rnnlang.lower.train import train_section
    module, base = parse_program(spec)
    return train_section(module, model, base)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    steps: int
    epochs: int
    stopped_early: bool = False
    best_val: float | None = None
    skipped_steps: int = 0
    resumed_from: int | None = None  # the step of the checkpoint resumed from


class Progress:
    """One updating line on a terminal (loss, steps/s, ETA); plain lines per epoch otherwise."""

    def __init__(self, stream: TextIO | None, total_steps: int) -> None:
        self.stream = stream
        self.total = total_steps
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.first_step: int | None = None
        self.last = 0.0

    def step(self, epoch: int, epochs: int, batch: int, batches: int, step: int,
             loss: float) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.t0 = step - 1, now
        if not self.tty or (now - self.last < 0.1 and batch < batches):
            return
        self.last = now
        done = step - self.first_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        self.stream.write(f"\repoch {epoch + 1}/{epochs} batch {batch}/{batches} step {step} "
                          f"loss {loss:.5g} {rate:.1f} steps/s ETA {_hms(eta)}  ")
        self.stream.flush()

    def speed(self, step: int) -> str:
        """Throughput and ETA for the per-epoch lines (the terminal line has its own)."""
        if self.tty or self.first_step is None or step <= self.first_step:
            return ""
        rate = (step - self.first_step) / max(time.perf_counter() - self.t0, 1e-9)
        return f" ({rate:.1f} steps/s, ETA {_hms((self.total - step) / rate)})"

    def line(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(("\r" if self.tty else "") + text + "\n")
        self.stream.flush()


def _hms(s: float) -> str:
    s = int(max(0.0, s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _specs(model: Model, losses: Sequence[LossSpec | str] | None) -> list[LossSpec]:
    specs = [parse_loss(s) if isinstance(s, str) else s
             for s in (losses or [LossSpec(o) for o in model.output_names
                                  if o not in model.state_outputs])]
    seen: set[str] = set()
    for s in specs:
        if s.output not in model.output_names:
            raise error("E802", f"model '{model.name}' has no output '{s.output}'", None,
                        hint="its outputs are " + ", ".join(model.output_names))
        if s.output in seen:
            raise error("E802", f"two losses for output '{s.output}'", None)
        seen.add(s.output)
    return specs


def _as_dataset(data: Dataset | Mapping[str, Any]) -> Dataset:
    return data if isinstance(data, Dataset) else from_arrays(data)


def _model_inputs(model: Model) -> list[tuple[str, str]]:
    return [(i.var.name, i.role) for i in model.program.inputs if i.role in ("seq", "vec")]


def _out_lengths(model: Model, data: Dataset, idx: np.ndarray, batch: Batch,
                 specs: Sequence[LossSpec]) -> dict[str, np.ndarray | None]:
    """Which lengths mask each output: ``lengths:<output>`` if the data give them, else those
    of the sequence input whose time axis the output runs along (each sequence input has an
    axis of its own, ``T:<input>``: an encoder-decoder's outputs run on the target's axis, not
    the source's); an output on an axis of its own is not masked."""
    axes = {i.var.shape[0]: i.var.name for i in model.program.inputs if i.role == "seq"}
    shapes = dict(zip(model.program.output_names,
                      (o.shape for o in model.program.outputs), strict=True))
    res: dict[str, np.ndarray | None] = {}
    for s in specs:
        shape = shapes[s.output]
        src = axes.get(shape[0]) if len(shape) == 3 else None
        res[s.output] = (data.lengths[s.output][idx] if s.output in data.lengths
                         else batch.lengths.get(src) if src else None)
    return res


def _ensure_params(model: Model, batch: Batch) -> None:
    if not model.params:  # sizes read from data: allocate as the first call would
        model._bind(batch.inputs, {}, batch.lengths or None, None)


def _seq_outputs(model: Model) -> set[str]:
    return {n for n, v in zip(model.program.output_names, model.program.outputs, strict=True)
            if len(v.shape) == 3}


@dataclass(frozen=True)
class Window:
    """One truncated-BPTT update: run steps ``start:end`` from the state at ``start`` and
    score the steps ``first:end`` (those new since the previous update)."""

    start: int
    first: int
    end: int


def tbptt_windows(t: int, k1: int, k2: int) -> list[Window]:
    """The updates of TBPTT(k1, k2) over ``t`` steps: update c ends at step
    e = min((c + 1) k1, t), backpropagates k2 steps (to max(0, e - k2)) and scores the steps
    since the previous update; with k1 > k2 the first k1 - k2 of those run forward only and
    their losses do not count. With k1 == k2 these are the chunks ``0:k1``, ``k1:2 k1``, ...,
    except that a short last chunk still reaches k2 steps back."""
    out = []
    for c in range(math.ceil(t / k1)):
        end = min((c + 1) * k1, t)
        start = max(0, end - k2)
        out.append(Window(start, max(c * k1, start), end))
    return out


def _carry_at(windows: Sequence[Window], c: int) -> int:
    """Where the states carried into update ``c`` stand: made during update c - 1 (with its
    parameters) up to the next window's start, or to its own end if that comes first."""
    return 0 if c == 0 else min(windows[c].start, windows[c - 1].end)


def _tbptt_windows(model: Model, k1: int, k2: int, specs: Sequence[LossSpec], ds: Dataset,
                   inputs: Sequence[tuple[str, str]]) -> list[Window] | None:
    """The windows of truncated BPTT, or None where one window covers every step (ordinary
    training); E805 where it does not apply (no state, losses that are not per step, padded
    or unequal sequences)."""
    ts = {ds.arrays[n].shape[1] for n, r in inputs if r == "seq"}
    if len(ts) != 1:
        raise error("E805", "tbptt needs sequence inputs that all have the same length"
                    if ts else "tbptt needs a sequence input", None)
    t = ts.pop()
    windows = tbptt_windows(t, k1, k2)
    if windows == [Window(0, 0, t)]:
        return None
    if not model.state_outputs:
        what = "has no recurrent state" if model.options.stateful else "is not stateful"
        raise error("E805", f"tbptt needs a model compiled with stateful=True (model "
                    f"'{model.name}' {what})", None,
                    hint="rnnlang.compile(..., stateful=True); rnnc train --tbptt does this")
    seq_outs = _seq_outputs(model)
    for s in specs:
        if s.output not in seq_outs or s.reduction != "step":
            raise error("E805", f"tbptt needs per-step losses on sequence outputs; the loss "
                        f"on '{s.output}' is not one", None,
                        hint="use OUT=KIND:step on outputs that are sequences")
    for name, ln in ds.lengths.items():
        if np.any(ln != t):
            raise error("E805", f"tbptt needs unpadded sequences, but {ds.source} has "
                        f"{'lengths:' + name if name else 'lengths'} below T = {t}", None,
                        hint="cut the data into full-length windows (--window T)")
    return windows


def _chunk(b: Batch, t0: int, t1: int, seq_inputs: set[str], seq_outputs: set[str]) -> Batch:
    """Steps ``t0:t1`` of a time-major batch whose sequences are all full length."""
    ins = {k: (np.ascontiguousarray(v[t0:t1]) if k in seq_inputs else v)
           for k, v in b.inputs.items()}
    tg = {k: (np.ascontiguousarray(v[t0:t1]) if k in seq_outputs else v)
          for k, v in b.targets.items()}
    return Batch(ins, {}, tg, b.size)


def _advance(model: Model, b: Batch, t0: int, t1: int, state: dict[str, np.ndarray],
             seq_inputs: set[str], seq_outputs: set[str]) -> dict[str, np.ndarray]:
    """The states at step ``t1`` from those at ``t0``: a forward run, no gradient."""
    if t1 == t0:
        return state
    with np.errstate(all="ignore"):
        _, st = model.forward(_chunk(b, t0, t1, seq_inputs, seq_outputs).inputs,
                              initial=state or None, return_state=True)
    return {n: np.array(v) for n, v in st.items()}


def _finite(grads: Mapping[str, np.ndarray]) -> str | None:
    for k in sorted(grads):
        if not np.all(np.isfinite(grads[k])):
            return k
    return None


def fit(model: Model, data: Dataset | Mapping[str, Any],
        losses: Sequence[LossSpec | str] | None = None, config: TrainConfig | None = None, *,
        val_data: Dataset | Mapping[str, Any] | None = None, resume: bool | str | Path = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
        progress: TextIO | None = None) -> FitResult:
    """Train ``model.params`` in place. ``losses``: specs like ``"y=xent:last"`` (default: mse
    on every output). ``resume``: True (``config.checkpoint``) or a checkpoint path; a missing
    file starts from scratch. ``callback(info)`` runs after every step (info: epoch, batch,
    step, loss). Raises `RnnUserError` (E803) on a non-finite loss or gradient unless
    ``config.on_nonfinite == "skip"``."""
    cfg = config or TrainConfig()
    cfg.check()
    specs = _specs(model, losses)
    ds = _as_dataset(data)
    inputs = _model_inputs(model)
    targets = {s.output: s.target_name for s in specs}
    labels = {s.output for s in specs if s.kind == "xent"}
    check_data(ds, inputs, targets)
    if val_data is not None:
        train, val = ds, _as_dataset(val_data)
    else:
        train, val = split(ds, cfg.val_fraction, cfg.seed)
    if val is not None:
        check_data(val, inputs, targets)
    bs = min(cfg.batch_size, train.n)
    nb = math.ceil(train.n / bs)
    windows = (None if cfg.tbptt is None else
               _tbptt_windows(model, cfg.tbptt, cfg.tbptt_k2 or cfg.tbptt, specs, train, inputs))
    nc = len(windows) if windows else 1  # updates per batch
    seq_inputs = {n for n, r in inputs if r == "seq"}
    seq_outputs = _seq_outputs(model)
    total = cfg.epochs * nb * nc
    if cfg.max_steps is not None:
        total = min(cfg.max_steps, total)
    opt = make_optimizer(cfg.optimizer, **cfg.optimizer_options)
    sched = make_schedule(cfg.schedule, cfg.lr, total_steps=total, step_size=cfg.step_size,
                          gamma=cfg.gamma, warmup=cfg.warmup, min_lr=cfg.min_lr)
    _ensure_params(model, make_batch(train, np.arange(min(bs, train.n)), inputs, targets, labels))

    rng = np.random.default_rng(cfg.seed)
    epoch = batch_i = chunk_i = step = skipped = bad_epochs = 0
    carry: dict[str, np.ndarray] = {}  # tbptt: states at _carry_at(windows, chunk_i)
    perm = np.arange(train.n)
    best_val: float | None = None
    best: dict[str, np.ndarray] = {}
    history: list[dict[str, float]] = []
    ep_sum, ep_n = 0.0, 0
    stopped = False
    fingerprint = {"train": train.fingerprint(), "val": val.fingerprint() if val else None}
    resumed_from = None

    ckpt_path = Path(resume) if isinstance(resume, str | Path) else cfg.checkpoint
    if resume and ckpt_path is None:
        raise error("E805", "resume needs a checkpoint path", None)
    out = Progress(progress, total)
    if resume and ckpt_path is not None and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        check_compatible(ckpt_path, model, ck)
        m = ck.meta
        if m.get("data") != fingerprint:
            raise error("E804", f"{ckpt_path} was written while training on other data",
                        None, hint="resume with the same data files and validation split")
        if m.get("config") != _jsonable(cfg.trajectory()):
            diff = [k for k, v in _jsonable(cfg.trajectory()).items()
                    if (m.get("config") or {}).get(k) != v]
            raise error("E804", f"{ckpt_path} was written with other training options ("
                        + ", ".join(diff) + ")", None,
                        hint="resume with the same options; only --epochs and checkpointing "
                        "may change")
        model.params = {k: np.array(v, dtype=model.dtype) for k, v in ck.params.items()}
        opt.load_state(m["optimizer"], ck.opt_state, model.params)
        best = {k: np.array(v) for k, v in ck.best.items()}
        st = m["state"]
        epoch, batch_i, step = st["epoch"], st["batch"], st["step"]
        skipped, bad_epochs = st["skipped"], st["bad_epochs"]
        best_val, ep_sum, ep_n = st["best_val"], st["epoch_loss_sum"], st["epoch_batches"]
        stopped = st["stopped"]
        history = list(m["history"])
        rng.bit_generator.state = m["rng"]
        perm = ck.data["perm"]
        chunk_i = st.get("chunk", 0)
        carry = {n[len("carry/"):]: v for n, v in ck.data.items() if n.startswith("carry/")}
        resumed_from = step
        out.line(f"resuming from {ckpt_path} at epoch {epoch + 1}, step {step}")
    elif resume:
        out.line(f"no checkpoint at {ckpt_path}: starting from scratch")

    def save() -> None:
        if cfg.checkpoint is None:
            return
        meta = {"state": {"epoch": epoch, "batch": batch_i, "step": step, "skipped": skipped,
                          "bad_epochs": bad_epochs, "best_val": best_val,
                          "epoch_loss_sum": ep_sum, "epoch_batches": ep_n,
                          "stopped": stopped, **({"chunk": chunk_i} if windows else {})},
                "history": history, "rng": rng.bit_generator.state,
                "optimizer": opt.config(), "config": _jsonable(cfg.trajectory()),
                "data": fingerprint, "seed": cfg.seed}
        save_checkpoint(cfg.checkpoint, model, Checkpoint(
            dict(model.params), dict(opt.state), _jsonable(meta), best,
            {"perm": perm, **{"carry/" + n: v for n, v in carry.items()}}))

    while epoch < cfg.epochs and not stopped and (cfg.max_steps is None
                                                  or step < cfg.max_steps):
        if batch_i == 0 and chunk_i == 0:
            perm = rng.permutation(train.n)
            ep_sum, ep_n = 0.0, 0
        while batch_i < nb and (cfg.max_steps is None or step < cfg.max_steps):
            idx = perm[batch_i * bs:(batch_i + 1) * bs]
            b = make_batch(train, idx, inputs, targets, labels)
            full, w = b, None
            if windows:
                w = windows[chunk_i]
                if (at := _carry_at(windows, chunk_i)) < w.start:  # forward only, no loss
                    carry = _advance(model, full, at, w.start, carry, seq_inputs, seq_outputs)
                b = _chunk(full, w.start, w.end, seq_inputs, seq_outputs)
            fn = make_loss_fn(specs, b.targets, {} if w else _out_lengths(model, train, idx, b, specs),
                              from_step=w.first - w.start if w else 0)
            with np.errstate(all="ignore"):  # non-finite values are reported below
                g = model.value_and_grad(fn, b.inputs, lengths=b.lengths or None,
                                         initial=carry or None)
            if w is not None and chunk_i + 1 < nc:  # detached states for the next update
                to = _carry_at(windows, chunk_i + 1)  # type: ignore[arg-type]
                carry = ({n: np.array(v) for n, v in model.split_state(g.outputs)[1].items()}
                         if to == w.end else
                         _advance(model, full, w.start, to, carry, seq_inputs, seq_outputs))
            loss = float(g.loss if g.loss is not None else math.nan)
            grads = dict(g.params)
            bad = None if math.isfinite(loss) else "the loss"
            if bad is None and (k := _finite(grads)) is not None:
                bad = f"the gradient of '{k}'"
            if bad is not None:
                if cfg.on_nonfinite == "stop":
                    raise error("E803", f"{bad} is not finite at epoch {epoch + 1}, step "
                                f"{step + 1} (loss {loss}); training stopped, no checkpoint "
                                "written for this step", None,
                                hint="lower --lr, clip gradients (--clip-norm), check the "
                                "data, or skip such steps with --on-nonfinite skip")
                skipped += 1
                carry = {}  # tbptt: the next chunk starts from zero states
            else:
                if cfg.clip_value is not None:
                    clip_by_value(grads, cfg.clip_value)
                if cfg.clip_norm is not None:
                    clip_by_global_norm(grads, cfg.clip_norm)
                with np.errstate(all="ignore"):
                    opt.step(model.params, grads, sched(step))
                if (k := _finite(model.params)) is not None:
                    raise error("E803", f"parameter '{k}' became non-finite at epoch "
                                f"{epoch + 1}, step {step + 1}; training stopped, no "
                                "checkpoint written for this step", None,
                                hint="lower --lr or clip gradients (--clip-norm)")
                ep_sum += loss
                ep_n += 1
            step += 1
            chunk_i += 1
            if chunk_i == nc:
                batch_i, chunk_i, carry = batch_i + 1, 0, {}
            out.step(epoch, cfg.epochs, batch_i, nb, step, loss)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save()
            if callback is not None:
                callback({"epoch": epoch, "batch": batch_i, "step": step, "loss": loss})
        if batch_i < nb:  # max_steps reached mid-epoch
            save()
            break
        rec: dict[str, float] = {"epoch": epoch + 1, "step": step,
                                 "loss": ep_sum / ep_n if ep_n else math.nan}
        if val is not None:
            v = evaluate(model, val, specs, batch_size=bs)["loss"]
            rec["val_loss"] = v
            if best_val is None or v < best_val:
                best_val, bad_epochs = v, 0
                best = {k: a.copy() for k, a in model.params.items()}
            else:
                bad_epochs += 1
                if cfg.patience is not None and bad_epochs >= cfg.patience:
                    stopped = True
        history.append(rec)
        out.line(f"epoch {epoch + 1}/{cfg.epochs} step {step} loss {rec['loss']:.6g}"
                 + (f" val_loss {rec['val_loss']:.6g}" if "val_loss" in rec else "")
                 + (" (early stop)" if stopped else "") + out.speed(step))
        epoch += 1
        batch_i = 0
        save()
    if cfg.restore_best and best:
        model.params = {k: a.copy() for k, a in best.items()}
    return FitResult(history, step, epoch, stopped, best_val, skipped, resumed_from)


def _jsonable(x: Any) -> Any:
    """Round-trips through JSON unchanged (tuples become lists, paths strings)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def evaluate(model: Model, data: Dataset | Mapping[str, Any],
             losses: Sequence[LossSpec | str] | None = None, *,
             batch_size: int = 256) -> dict[str, float]:
    """Mean loss per output over all valid positions of ``data`` and their weighted sum
    (``"loss"``)."""
    specs = _specs(model, losses)
    ds = _as_dataset(data)
    inputs = _model_inputs(model)
    targets = {s.output: s.target_name for s in specs}
    labels = {s.output for s in specs if s.kind == "xent"}
    check_data(ds, inputs, targets)
    sums = dict.fromkeys(targets, 0.0)
    counts = dict.fromkeys(targets, 0.0)
    for start in range(0, ds.n, batch_size):
        idx = np.arange(start, min(start + batch_size, ds.n))
        b = make_batch(ds, idx, inputs, targets, labels)
        outs = model.forward(b.inputs, lengths=b.lengths or None)
        lens = _out_lengths(model, ds, idx, b, specs)
        for s in specs:
            total, count, _ = loss_terms(outs[s.output], b.targets[s.output], s, lens[s.output])
            sums[s.output] += total
            counts[s.output] += count
    res = {s.output: sums[s.output] / max(counts[s.output], 1.0) for s in specs}
    res["loss"] = sum(s.weight * res[s.output] for s in specs)
    return res


def predict(model: Model, data: Dataset | Mapping[str, Any], *,
            batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every output for every example, batch-first: ``(N, T, O)`` sequences, ``(N, O)``
    vectors (steps past a sequence's length are zero)."""
    ds = _as_dataset(data)
    inputs = _model_inputs(model)
    check_data(ds, inputs, {}, need_targets=False)
    parts: dict[str, list[np.ndarray]] = {o: [] for o in model.output_names}
    for start in range(0, ds.n, batch_size):
        idx = np.arange(start, min(start + batch_size, ds.n))
        b = make_batch(ds, idx, inputs, {})
        for k, v in model.forward(b.inputs, lengths=b.lengths or None).items():
            parts[k].append(np.swapaxes(v, 0, 1) if v.ndim == 3 else v)
    return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def default_progress() -> TextIO:
    return sys.stderr
