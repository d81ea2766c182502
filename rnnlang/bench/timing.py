"""Interleaved median timing, shared by ``rnnc bench`` and benchmarks/bench_cpu.py.

Backends are timed in rounds that alternate between them (the starting backend rotates), so a
burst of load from another process slows every backend alike instead of one; each figure is the
median over rounds. The garbage collector is off inside a round.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                     min_repeats: int, budget_s: float, min_sample_s: float
                     ) -> dict[str, dict[str, Any]]:
    """Median seconds per call for each function, rounds interleaved (rotating order).

    Each sample runs ``number`` calls (calibrated so a sample lasts >= min_sample_s); the number
    of rounds is cut down from ``repeats`` (not below ``min_repeats``) to fit ``budget_s``.
    Returns per name: ``median_s``, ``min_s``, ``samples_s``, ``number``, ``repeats``.
    """
    est: dict[str, float] = {}
    for name, fn in fns.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        est[name] = per_call(fn, 1)
    number = {n: max(1, math.ceil(min_sample_s / max(t, 1e-9))) for n, t in est.items()}
    round_s = sum(number[n] * est[n] for n in fns)
    rounds = max(min_repeats, min(repeats, int(budget_s / max(round_s, 1e-9))), 1)
    samples: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    gc_was = gc.isenabled()
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()
            for k in range(len(names)):
                n = names[(r + k) % len(names)]
                samples[n].append(per_call(fns[n], number[n]))
            if gc_was:
                gc.enable()
    finally:
        if gc_was:
            gc.enable()
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": s,
                "number": number[n], "repeats": rounds} for n, s in samples.items()}


__all__ = ["per_call", "time_interleaved"]
