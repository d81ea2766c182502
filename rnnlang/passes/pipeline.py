"""The pass pipeline, read top to bottom like a recipe.

Forward passes run on the model program before autodiff, so BPTT is derived from the optimized
forward; `BACKWARD` passes run on the derived programs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rnnlang.ir.nodes import Program
from rnnlang.passes.dce import dce

Pass = Callable[[Program, object], Program]


def _forward_passes() -> tuple[tuple[str, Pass], ...]:
    from rnnlang.passes.fuse import fuse_gate_matmuls
    from rnnlang.passes.hoist import hoist_input_projections

    return (
        ("fuse_gate_matmuls", fuse_gate_matmuls),
        ("hoist_input_projections", hoist_input_projections),
        ("dce", dce),
    )


def _backward_passes() -> tuple[tuple[str, Pass], ...]:
    from rnnlang.passes.hoist_grads import hoist_weight_gradients

    return (("dce", dce), ("hoist_weight_gradients", hoist_weight_gradients))


BACKWARD: tuple[tuple[str, Pass], ...] = _backward_passes()


@dataclass
class PassLog:
    applied: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    dumps: list[tuple[str, Program]] = field(default_factory=list)


def run_passes(prog: Program, passes: tuple[tuple[str, Pass], ...], *, disabled: frozenset[str],
               log: PassLog, verify: Callable[[Program], None] | None = None,
               dump: frozenset[str] = frozenset()) -> Program:
    for name, fn in passes:
        if name in disabled:
            continue
        t0 = time.perf_counter()
        prog = fn(prog, None)
        log.timings.append((name, time.perf_counter() - t0))
        log.applied.append(name)
        if verify is not None:
            verify(prog)
        if name in dump or "all" in dump:
            log.dumps.append((name, prog))
    return prog


def forward_passes() -> tuple[tuple[str, Pass], ...]:
    return _forward_passes()
