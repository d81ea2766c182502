"""`rnnc train` and `rnnc eval`, plus inference on a data file for `rnnc run`.

`add_commands(subparsers, common)` registers ``train`` and ``eval`` on rnnc's subparsers
(``common`` adds the shared -D/--model/--dtype/--target/... options) and returns their handlers
by name; each handler is ``(args, out) -> exit code``. User mistakes raise `RnnUserError`.
For ``rnnc run SPEC --params CKPT --data FILE``: `add_run_options(parser)` adds the options and
`cmd_run_data(args, out)` runs the model over the file (predictions to ``--predictions``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from rnnlang.diagnostics import error

if TYPE_CHECKING:
    from rnnlang.api import Model
    from rnnlang.train.losses import LossSpec

Handler = Callable[[argparse.Namespace, TextIO], int]

TRAIN_HELP = """defaults: the spec's `train MODEL { ... }` section (docs/language.md 6.11) gives
the data, losses and options; a flag given here wins over it.
data: .npz with arrays named after the model's inputs, batch-first: (N, T, F)
sequences, (N, F) vectors, optional integer `lengths` (N,); targets named after the outputs
((N, T, O) per step, (N, O) or class indices (N,) / (N, T)), or mapped with --target-array OUT=ARRAY.
.csv: a header names the columns (x or x.0, x.1, ...); rows are steps; an optional `sequence`
column groups rows into sequences, else --window T cuts them.
losses: --loss OUT=mse|xent|bce[:step|last][*WEIGHT] (default: mse on every output that has a
target); `last` scores the last valid step of each sequence, `step` every valid step.
checkpoints: --checkpoint FILE (every --checkpoint-every steps and at each epoch end);
--resume continues from it exactly (same data and options; --epochs may grow).
--tbptt K1 [--tbptt-k2 K2]: truncated BPTT (unpadded sequences, per-step losses): one update
every K1 steps, backpropagating K2 steps (default K1: chunks of K1 steps, each starting from the
previous chunk's final states); see docs/training.md."""


def _usage(msg: str) -> int:
    sys.stderr.write(f"rnnc: error: {msg}\n")
    return 2


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", action="append", default=[], metavar="OUT=KIND[:step|last]",
                   help="loss per output: mse, xent (softmax cross-entropy), bce (with logits)")
    p.add_argument("--target-array", action="append", default=[], metavar="OUT=ARRAY",
                   help="the data array holding an output's targets (default: its name)")
    p.add_argument("--window", type=int, metavar="T", help="CSV: cut rows into sequences of T")
    p.add_argument("--batch-size", type=int, help="default 32 (or the train section's)")


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None],
                 ) -> dict[str, Handler]:
    """Register ``train`` and ``eval``; returns {name: handler}."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train a model's parameters on a data file",
                              description="Train a model.", epilog=TRAIN_HELP,
                              formatter_class=fmt)
    p.add_argument("file", type=Path)
    p.add_argument("--data", type=Path, help=".npz or .csv training data (default: the train "
                   "section's data)")
    p.add_argument("--val-data", type=Path, help="validation data (instead of --val-split)")
    p.add_argument("--val-split", type=float, metavar="FRACTION",
                   help="hold out this fraction of --data for validation (default 0)")
    _data_options(p)
    p.add_argument("--epochs", type=int, help="default 10")
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "rmsprop"),
                   help="default adam")
    p.add_argument("--momentum", type=float, help="sgd, rmsprop")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="sgd: Nesterov momentum")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam, rmsprop) or decoupled "
                   "(adamw)")
    p.add_argument("--beta1", type=float, help="adam, adamw")
    p.add_argument("--beta2", type=float, help="adam, adamw")
    p.add_argument("--eps", type=float, help="adam, adamw, rmsprop")
    p.add_argument("--alpha", type=float, help="rmsprop smoothing")
    p.add_argument("--schedule", choices=("constant", "step", "cosine"),
                   help="default constant")
    p.add_argument("--step-size", type=int, help="step schedule: steps per decay")
    p.add_argument("--gamma", type=float, help="step schedule: decay factor (default 0.1)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default 0)")
    p.add_argument("--min-lr", type=float, help="cosine schedule: final rate (default 0)")
    p.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    p.add_argument("--clip-value", type=float, help="clip each gradient element to +-VALUE")
    p.add_argument("--seed", type=int, help="initialization and shuffling (default 0)")
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better "
                   "validation loss")
    p.add_argument("--checkpoint", type=Path, help="training checkpoint file (.npz)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--tbptt", type=int, metavar="K",
                   help="truncated BPTT: one update every K steps, carrying the states "
                   "forward from update to update")
    p.add_argument("--tbptt-k2", type=int, metavar="K2",
                   help="truncated BPTT: backpropagate K2 steps per update (default: --tbptt)")
    p.add_argument("--on-nonfinite", choices=("stop", "skip"),
                   help="a NaN/inf loss or gradient stops training (default) or skips the step")
    p.add_argument("--test-data", type=Path, help="evaluate on this file after training (never "
                   "used for training or model selection)")
    p.add_argument("--baseline", choices=("last", "none"),
                   help="after training, compare the held-out loss with the naive last-value "
                   "forecast (the input at step t predicts the target at step t)")
    p.add_argument("-o", "--output", type=Path, help="write the trained parameters here")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    common(p)
    p.set_defaults(handler=cmd_train)
    p = subparsers.add_parser("eval", help="evaluate losses of trained parameters on data",
                              description="Evaluate a model.", epilog=TRAIN_HELP,
                              formatter_class=fmt)
    p.add_argument("file", type=Path)
    p.add_argument("--params", type=Path, required=True, metavar="CKPT",
                   help="parameters (Model.save / rnnc train -o) or a training checkpoint")
    p.add_argument("--data", type=Path, required=True)
    _data_options(p)
    common(p)
    p.set_defaults(handler=cmd_eval)
    return {"train": cmd_train, "eval": cmd_eval}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options for ``rnnc run SPEC --params CKPT --data FILE [--predictions OUT.npz]``."""
    p.add_argument("--params", type=Path, metavar="CKPT", help="trained parameters")
    p.add_argument("--data", type=Path, help="run on this .npz/.csv instead of random data")
    p.add_argument("--predictions", type=Path, metavar="OUT.npz",
                   help="with --data: write the outputs (batch-first) here")
    p.add_argument("--window", type=int, metavar="T", help="CSV: cut rows into sequences of T")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k or not v:
            raise error("E805", f"{flag} expects NAME=VALUE, got '{it}'", None)
        out[k.strip()] = v.strip()
    return out


def _losses(args: argparse.Namespace, model: Model, data_names: set[str],
            section: dict[str, Any] | None = None) -> list[LossSpec]:
    """Losses from --loss (else the train section's, else mse on every output with a
    target); targets from --target-array, then the section's ``target`` lines."""
    from dataclasses import replace

    from rnnlang.train.losses import LossSpec, parse_loss
    section = section or {}
    targets = dict(section.get("targets", {}))
    cli_targets = _pairs(args.target_array, "--target-array")
    for k in cli_targets:
        if k not in model.output_names:
            raise error("E802", f"--target-array names '{k}', which is not an output of "
                        f"'{model.name}'", None,
                        hint="its outputs are " + ", ".join(model.output_names))
    targets.update(cli_targets)
    if args.loss:
        specs = [parse_loss(s) for s in args.loss]
    elif section.get("losses"):
        specs = list(section["losses"])
    else:
        specs = [LossSpec(o) for o in model.output_names if targets.get(o, o) in data_names]
        if not specs:
            raise error("E801", f"{args.data} holds no target for any output of "
                        f"'{model.name}' ({', '.join(model.output_names)})", None,
                        hint="name the target arrays after the outputs, or use --target-array "
                        "OUT=ARRAY and --loss OUT=KIND")
    return [replace(s, target=targets.get(s.output)) for s in specs]


def _section(args: argparse.Namespace) -> dict[str, Any]:
    """The checked ``train`` section of the model being trained ({} if none)."""
    from rnnlang.api import parse_program
    from rnnlang.lower.train import train_section
    module, base = parse_program(args.file)
    return train_section(module, getattr(args, "model", None), base)


def _pick(flag: Any, section: dict[str, Any], key: str, default: Any) -> Any:
    """An explicit command-line value wins over the train section, which wins over the
    default."""
    if flag is not None:
        return flag
    return section.get(key, default)


def _compile(args: argparse.Namespace, seed: int = 0, stateful: bool = False) -> Model:
    import rnnlang
    from rnnlang.cli import _opts
    return rnnlang.compile(args.file, seed=seed, stateful=stateful,  # type: ignore[arg-type]
                           **_opts(args))


def load_params(model: Model, path: Path) -> None:
    """Parameters from a `Model.save` file or from a training checkpoint."""
    from rnnlang.checkpoint import load_arrays
    from rnnlang.train.checkpoint import KIND, check_compatible, load_checkpoint
    _, meta = load_arrays(path)
    if meta.get("kind") == KIND:
        ck = load_checkpoint(path)
        check_compatible(path, model, ck)
        model.params = {k: np.array(v, dtype=model.dtype) for k, v in ck.params.items()}
    else:
        model.load(path)


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    from rnnlang.train.data import load_data, split
    from rnnlang.train.loop import TrainConfig, evaluate, fit
    if args.resume and args.checkpoint is None:
        return _usage("--resume needs --checkpoint FILE")
    sec = _section(args)
    args.data = _pick(args.data, sec, "data", None)
    if args.data is None:
        return _usage("give --data FILE (or data = \"FILE\" in the model's train section)")
    window = _pick(args.window, sec, "window", None)
    data = load_data(args.data, window=window)
    if args.val_data is None and args.val_split is None:
        args.val_data = sec.get("val_data")
    val = load_data(args.val_data, window=window) if args.val_data else None
    val_split = _pick(args.val_split, sec, "val_fraction", 0.0)
    if val is not None and val_split:
        return _usage("give --val-data or --val-split, not both")
    patience = _pick(args.patience, sec, "patience", None)
    if patience is not None and val is None and not val_split:
        return _usage("--patience needs validation data (--val-split or --val-data)")
    seed = _pick(args.seed, sec, "seed", 0)
    tbptt = _pick(getattr(args, "tbptt", None), sec, "tbptt", None)
    tbptt_k2 = _pick(getattr(args, "tbptt_k2", None), sec, "tbptt_k2", None)
    if tbptt_k2 is not None and tbptt is None:
        return _usage("--tbptt-k2 needs --tbptt (the number of steps between updates)")
    model = _compile(args, seed, stateful=tbptt is not None)
    specs = _losses(args, model, set(data.arrays), sec)
    optimizer = _pick(args.optimizer, sec, "optimizer", "adam")
    opt: dict[str, Any] = {"momentum": args.momentum, "weight_decay": args.weight_decay,
                           "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
                           "alpha": args.alpha, "nesterov": args.nesterov}
    opt = {k: v for k, v in opt.items() if v is not None}
    if args.optimizer is None or args.optimizer == sec.get("optimizer"):
        opt = {**sec.get("optimizer_options", {}), **opt}  # the section's options, flags win
    cfg = TrainConfig(epochs=_pick(args.epochs, sec, "epochs", 10),
                      batch_size=_pick(args.batch_size, sec, "batch_size", 32),
                      lr=_pick(args.lr, sec, "lr", 1e-3), optimizer=optimizer,
                      optimizer_options=opt,
                      schedule=_pick(args.schedule, sec, "schedule", "constant"),
                      step_size=_pick(args.step_size, sec, "step_size", 0),
                      gamma=_pick(args.gamma, sec, "gamma", 0.1),
                      warmup=_pick(args.warmup, sec, "warmup", 0),
                      min_lr=_pick(args.min_lr, sec, "min_lr", 0.0),
                      clip_norm=_pick(args.clip_norm, sec, "clip_norm", None),
                      clip_value=_pick(args.clip_value, sec, "clip_value", None),
                      seed=seed, val_fraction=val_split, patience=patience,
                      checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                      on_nonfinite=_pick(args.on_nonfinite, sec, "on_nonfinite", "stop"),
                      max_steps=_pick(args.max_steps, sec, "max_steps", None), tbptt=tbptt,
                      tbptt_k2=tbptt_k2)
    res = fit(model, data, specs, cfg, val_data=val, resume=args.resume,
              progress=None if args.no_progress else sys.stderr)
    last = res.history[-1] if res.history else {}
    msg = f"trained {model.name}: {res.steps} steps, {res.epochs} epochs"
    if "loss" in last:
        msg += f", loss {last['loss']:.6g}"
    if res.best_val is not None:
        msg += f", best val_loss {res.best_val:.6g}"
    if res.stopped_early:
        msg += " (stopped early)"
    if res.skipped_steps:
        msg += f", {res.skipped_steps} non-finite steps skipped"
    out.write(msg + "\n")
    test_path = _pick(args.test_data, sec, "test_data", None)
    test = load_data(test_path, window=window) if test_path is not None else None
    baseline = _pick(args.baseline, sec, "baseline", "none") == "last"
    if test is not None and not baseline:
        res_t = evaluate(model, test, specs)
        out.write(f"test loss on {test.n} sequences: {res_t['loss']:.6g}\n")
    elif baseline:
        held, where = test, "test"
        if held is None:
            held = val if val is not None else split(data, val_split, seed)[1]
            where = "validation" if held is not None else "training"
        report_baseline(model, held if held is not None else data, specs, out, where)
    if args.output is not None:
        model.save(args.output)
        out.write(f"wrote {args.output}\n")
    return 0


def last_value_losses(model: Model, data: Any, specs: list[LossSpec]) -> dict[str, float]:
    """The losses of the naive last-value forecast: the model's one sequence input at step t
    stands in for every output at step t (the one-step-ahead persistence forecast)."""
    from rnnlang.train.data import make_batch
    from rnnlang.train.losses import loss_terms
    seqs = [i.var.name for i in model.program.inputs if i.role == "seq"]
    if len(seqs) != 1:
        raise error("E805", "the last-value baseline needs a model with exactly one sequence "
                    f"input; '{model.name}' has {len(seqs)}", None)
    x = seqs[0]
    targets = {s.output: s.target_name for s in specs}
    sums = dict.fromkeys(targets, 0.0)
    counts = dict.fromkeys(targets, 0.0)
    for start in range(0, data.n, 256):
        idx = np.arange(start, min(start + 256, data.n))
        b = make_batch(data, idx, [(x, "seq")], targets,
                       {s.output for s in specs if s.kind == "xent"})
        lens = b.lengths.get(x) if b.lengths else None
        if lens is None and b.lengths:
            lens = next(iter(b.lengths.values()))
        for s in specs:
            pred = b.inputs[x]
            if (pred.shape[-1] != b.targets[s.output].shape[-1] or s.kind != "mse"
                    or b.targets[s.output].ndim != pred.ndim):
                raise error("E805", f"the last-value baseline needs an mse loss on a sequence "
                            f"output with the size of input '{x}' ({s.output} has a {s.kind} loss "
                            f"on size {b.targets[s.output].shape[-1]}, {x} has size "
                            f"{pred.shape[-1]})", None)
            total, count, _ = loss_terms(pred.astype(np.float64), b.targets[s.output], s, lens)
            sums[s.output] += total
            counts[s.output] += count
    res = {s.output: sums[s.output] / max(counts[s.output], 1.0) for s in specs}
    res["loss"] = sum(s.weight * res[s.output] for s in specs)
    return res


def report_baseline(model: Model, data: Any, specs: list[LossSpec], out: TextIO,
                    where: str = "held-out") -> dict[str, float]:
    """Print the model's loss on ``data`` next to the last-value forecast's; returns both."""
    from rnnlang.train.loop import evaluate
    ours = evaluate(model, data, specs)["loss"]
    naive = last_value_losses(model, data, specs)["loss"]
    ratio = ours / naive if naive > 0 else float("inf")
    verdict = "beats" if ours < naive else "does not beat"
    out.write(f"{where} loss on {data.n} sequences: model {ours:.6g}, last-value baseline "
              f"{naive:.6g} (model/baseline {ratio:.3f}: the model {verdict} the baseline)\n")
    return {"model": ours, "baseline": naive, "ratio": ratio}


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import evaluate
    sec = _section(args)
    data = load_data(args.data, window=_pick(args.window, sec, "window", None))
    model = _compile(args)
    load_params(model, args.params)
    specs = _losses(args, model, set(data.arrays), sec)
    res = evaluate(model, data, specs,
                   batch_size=max(1, _pick(args.batch_size, sec, "batch_size", 32)))
    for s in specs:
        out.write(f"{s.output} ({s.kind}, {s.reduction}): {res[s.output]:.6g}\n")
    out.write(f"loss: {res['loss']:.6g}\n")
    return 0


def cmd_run_data(args: argparse.Namespace, out: TextIO) -> int:
    """Inference for ``rnnc run SPEC --params CKPT --data FILE`` (see `add_run_options`)."""
    import io

    from rnnlang.codegen.load import atomic_write
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import predict
    data = load_data(args.data, window=args.window)
    model = _compile(args)
    if args.params is not None:
        load_params(model, args.params)
    preds = predict(model, data, batch_size=max(1, getattr(args, "batch_size", 256) or 256))
    for k, v in preds.items():
        out.write(f"output {k}: shape {v.shape}, mean {float(v.mean()):+.6g}\n")
    if args.predictions is not None:
        buf = io.BytesIO()
        np.savez(buf, **preds)  # type: ignore[arg-type]
        atomic_write(args.predictions, buf.getvalue())
        out.write(f"wrote {args.predictions}\n")
    return 0
