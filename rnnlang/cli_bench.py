"""`rnnc bench SPEC`: time a model's generated CPU code against a NumPy loop and a torch loop.

`add_commands(subparsers, common)` registers the command on rnnc's subparsers (``common`` adds
the shared -D/--model/... options) and returns its handler by name, like `rnnlang.cli_viz`.
The work is done by `rnnlang.bench.spec`; this module only maps flags onto it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

Handler = Callable[[argparse.Namespace, TextIO], int]

BENCH_HELP = """baselines (each checked against rnnlang before it is timed):
  numpy-loop  rnnlang's reference interpreter (target="reference"): the model's IR with the
              time loop in Python and one NumPy call per equation per step
  torch-loop  the same IR in eager PyTorch, backward by autograd (only when torch is installed)
modes: fwd (forward) and fwdbwd (forward + gradients of sum(y * cot) over all outputs for every
parameter, input and initial state). Times are medians over interleaved rounds; compare them
only within one run."""


def _usage(msg: str) -> int:
    sys.stderr.write(f"rnnc: error: {msg}\n")
    return 2


def add_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None],
                 ) -> dict[str, Handler]:
    """Register ``bench``; returns {name: handler}."""
    p = subparsers.add_parser("bench", help="time a model against a NumPy loop and a torch loop",
                              description="Benchmark one model of a spec on random data.",
                              epilog=BENCH_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--T", "--steps", dest="steps", type=int, default=50,
                   help="sequence length T (default 50)")
    p.add_argument("--B", "--batch", dest="batch", type=int, default=8,
                   help="batch size B (default 8)")
    p.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both (default)")
    p.add_argument("--repeats", type=int, default=11, help="max timed rounds (default 11)")
    p.add_argument("--budget", type=float, default=3.0,
                   help="seconds of timed rounds per mode before repeats are cut (default 3)")
    p.add_argument("--threads", type=int, default=2,
                   help="Numba and torch threads (default 2)")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy-loop baseline")
    p.add_argument("--no-torch", action="store_true", help="skip the torch-loop baseline")
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(handler=cmd_bench)
    return {"bench": cmd_bench}


def _modes(text: str) -> tuple[str, ...] | None:
    from rnnlang.bench.spec import MODES
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    return items if items and all(m in MODES for m in items) else None


def _set_threads(n: int) -> None:
    import numba
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    from rnnlang.bench import have_torch
    if have_torch():
        import torch
        torch.set_num_threads(n)


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    import rnnlang
    from rnnlang.bench.spec import BenchOptions, bench_spec, report_text
    from rnnlang.cli import _opts

    modes = _modes(args.modes)
    if modes is None:
        return _usage("--modes takes fwd, fwdbwd or fwd,fwdbwd")
    if not 1 <= args.steps <= 100_000 or not 1 <= args.batch <= 100_000:
        return _usage("--T and --B must be between 1 and 100000")
    if args.repeats < 1 or args.budget < 0 or args.threads < 1:
        return _usage("--repeats and --threads must be at least 1, --budget at least 0")
    if args.target != "cpu":
        return _usage("rnnc bench times the cpu target (the reference target is its NumPy "
                      "baseline)")
    _set_threads(args.threads)
    opts = _opts(args)
    model = rnnlang.compile(args.file, seed=args.seed, **opts)  # type: ignore[arg-type]
    ref = None
    if not args.no_numpy:
        ref = rnnlang.compile(args.file, seed=args.seed,  # type: ignore[arg-type]
                              **{**opts, "target": "reference"})
    bo = BenchOptions(steps=args.steps, batch=args.batch, modes=modes, seed=args.seed,
                      repeats=args.repeats, min_repeats=min(3, args.repeats),
                      budget_s=args.budget, torch=not args.no_torch)
    res = bench_spec(model, ref, bo)
    out.write(report_text(res, str(args.file), args.threads))
    if res.mismatches:
        sys.stderr.write("rnnc: internal error: a baseline disagrees with rnnlang's generated "
                         "code: " + "; ".join(res.mismatches) + "\nThis is a bug in rnnlang "
                         "(or in its benchmark baselines); please report it with the .rnn "
                         "file.\n")
        return 3
    return 0


__all__ = ["add_commands", "cmd_bench"]
