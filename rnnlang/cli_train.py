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

TRAIN_HELP = """data: .npz with arrays named after the model's inputs, batch-first: (N, T, F)
sequences, (N, F) vectors, optional integer `lengths` (N,); targets named after the outputs
((N, T, O) per step, (N, O) or class indices (N,) / (N, T)), or mapped with --target-array OUT=ARRAY.
.csv: a header names the columns (x or x.0, x.1, ...); rows are steps; an optional `sequence`
column groups rows into sequences, else --window T cuts them.
losses: --loss OUT=mse|xent|bce[:step|last][*WEIGHT] (default: mse on every output that has a
target); `last` scores the last valid step of each sequence, `step` every valid step.
checkpoints: --checkpoint FILE (every --checkpoint-every steps and at each epoch end);
--resume continues from it exactly (same data and options; --epochs may grow)."""


def _usage(msg: str) -> int:
    sys.stderr.write(f"rnnc: error: {msg}\n")
    return 2


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loss", action="append", default=[], metavar="OUT=KIND[:step|last]",
                   help="loss per output: mse, xent (softmax cross-entropy), bce (with logits)")
    p.add_argument("--target-array", action="append", default=[], metavar="OUT=ARRAY",
                   help="the data array holding an output's targets (default: its name)")
    p.add_argument("--window", type=int, metavar="T", help="CSV: cut rows into sequences of T")
    p.add_argument("--batch-size", type=int, default=32)


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None],
                 ) -> dict[str, Handler]:
    """Register ``train`` and ``eval``; returns {name: handler}."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("train", help="train a model's parameters on a data file",
                              description="Train a model.", epilog=TRAIN_HELP,
                              formatter_class=fmt)
    p.add_argument("file", type=Path)
    p.add_argument("--data", type=Path, required=True, help=".npz or .csv training data")
    p.add_argument("--val-data", type=Path, help="validation data (instead of --val-split)")
    p.add_argument("--val-split", type=float, default=0.0, metavar="FRACTION",
                   help="hold out this fraction of --data for validation (default 0)")
    _data_options(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "rmsprop"), default="adam")
    p.add_argument("--momentum", type=float, help="sgd, rmsprop")
    p.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    p.add_argument("--weight-decay", type=float, help="L2 (sgd, adam, rmsprop) or decoupled "
                   "(adamw)")
    p.add_argument("--beta1", type=float, help="adam, adamw")
    p.add_argument("--beta2", type=float, help="adam, adamw")
    p.add_argument("--eps", type=float, help="adam, adamw, rmsprop")
    p.add_argument("--alpha", type=float, help="rmsprop smoothing")
    p.add_argument("--schedule", choices=("constant", "step", "cosine"), default="constant")
    p.add_argument("--step-size", type=int, default=0, help="step schedule: steps per decay")
    p.add_argument("--gamma", type=float, default=0.1, help="step schedule: decay factor")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    p.add_argument("--min-lr", type=float, default=0.0, help="cosine schedule: final rate")
    p.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    p.add_argument("--clip-value", type=float, help="clip each gradient element to +-VALUE")
    p.add_argument("--seed", type=int, default=0, help="initialization and shuffling")
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better "
                   "validation loss")
    p.add_argument("--checkpoint", type=Path, help="training checkpoint file (.npz)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--on-nonfinite", choices=("stop", "skip"), default="stop",
                   help="a NaN/inf loss or gradient stops training (default) or skips the step")
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


def _losses(args: argparse.Namespace, model: Model, data_names: set[str]) -> list[LossSpec]:
    from dataclasses import replace

    from rnnlang.train.losses import LossSpec, parse_loss
    targets = _pairs(args.target_array, "--target-array")
    for k in targets:
        if k not in model.output_names:
            raise error("E802", f"--target-array names '{k}', which is not an output of "
                        f"'{model.name}'", None,
                        hint="its outputs are " + ", ".join(model.output_names))
    if args.loss:
        specs = [parse_loss(s) for s in args.loss]
    else:
        specs = [LossSpec(o) for o in model.output_names if targets.get(o, o) in data_names]
        if not specs:
            raise error("E801", f"{args.data} holds no target for any output of "
                        f"'{model.name}' ({', '.join(model.output_names)})", None,
                        hint="name the target arrays after the outputs, or use --target-array "
                        "OUT=ARRAY and --loss OUT=KIND")
    return [replace(s, target=targets.get(s.output)) for s in specs]


def _compile(args: argparse.Namespace, seed: int = 0) -> Model:
    import rnnlang
    from rnnlang.cli import _opts
    return rnnlang.compile(args.file, seed=seed, **_opts(args))  # type: ignore[arg-type]


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
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import TrainConfig, fit
    if args.resume and args.checkpoint is None:
        return _usage("--resume needs --checkpoint FILE")
    data = load_data(args.data, window=args.window)
    val = load_data(args.val_data, window=args.window) if args.val_data else None
    if val is not None and args.val_split:
        return _usage("give --val-data or --val-split, not both")
    if args.patience is not None and val is None and not args.val_split:
        return _usage("--patience needs validation data (--val-split or --val-data)")
    model = _compile(args, args.seed)
    specs = _losses(args, model, set(data.arrays))
    opt: dict[str, Any] = {"momentum": args.momentum, "weight_decay": args.weight_decay,
                           "beta1": args.beta1, "beta2": args.beta2, "eps": args.eps,
                           "alpha": args.alpha}
    if args.nesterov:
        opt["nesterov"] = True
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      optimizer=args.optimizer,
                      optimizer_options={k: v for k, v in opt.items() if v is not None},
                      schedule=args.schedule, step_size=args.step_size, gamma=args.gamma,
                      warmup=args.warmup, min_lr=args.min_lr, clip_norm=args.clip_norm,
                      clip_value=args.clip_value, seed=args.seed, val_fraction=args.val_split,
                      patience=args.patience, checkpoint=args.checkpoint,
                      checkpoint_every=args.checkpoint_every, on_nonfinite=args.on_nonfinite,
                      max_steps=args.max_steps)
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
    if args.output is not None:
        model.save(args.output)
        out.write(f"wrote {args.output}\n")
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    from rnnlang.train.data import load_data
    from rnnlang.train.loop import evaluate
    data = load_data(args.data, window=args.window)
    model = _compile(args)
    load_params(model, args.params)
    specs = _losses(args, model, set(data.arrays))
    res = evaluate(model, data, specs, batch_size=max(1, args.batch_size))
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
