"""Running one call as independent batch slices on several threads.

The generated functions release the GIL (``nogil=True``), so slices of the batch run truly in
parallel, each with its whole time loop and no synchronisation between steps: a recurrence
couples the steps of one row, never two rows. Where this is allowed is decided from the IR by
`rnnlang.ir.rows.row_plan`; this module only cuts arrays and joins the results.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from rnnlang.ir.rows import RowPlan

R = TypeVar("R")
MIN_ROWS = 4  # fewer rows per slice than this: one thread does better than two
MIN_FLOPS = 2e7  # a call cheaper than this (~1 ms) loses more to threads than it gains
# The first call of each sizes runs as batch slices wherever the rows may be split
# (executors.CpuExecutor._parts): each slice's time loop multiplies by its weights packed once
# (rnnlang.codegen.packed) on its own core, with no synchronisation between steps. Measured
# on the 2-core EPYC, 2026-11-27, one process, interleaved, against one whole-batch call with
# BLAS on both threads (docs/performance.md): lstm forward+backward (100, 32, 128) 18.2
# against 24.0 ms, (1000, 8, 128) 46.7 against 63.2, (100, 64, 512) 466 against 542; gru
# forward (100, 32, 128) 3.79 against 5.14. (On the 2-core Xeon, before the packed kernel
# and while the hoisted products kept the GIL, the whole-batch call had won at medium
# sizes.) A call that cannot be split runs whole, with BLAS threads when its per-step GEMM
# has at least this many flops (the medium and large benchmark cases). Under
# parallel="auto" this is only the first call's plan: the plans are then measured
# (executors.CpuExecutor._choose).
# Risk: a busy second core stalls every 2-thread GEMM (the blas_threads note).
WIDE_GEMM_FLOPS = 1e6
# compile(parallel=...): measured ("auto": the size rule above for the first call of each
# sizes, then each candidate (whole batch with BLAS threads, whole batch on one thread, batch
# slices) timed TUNE_CALLS times, alternating, and the best score kept (executors._score);
# then measured again now and then, see CHECK_FIRST), always batch slices, always whole-batch
# BLAS
MODES = ("auto", "slices", "blas")
# Three, so that the first choice already leaves out each plan's largest sample: logged in the
# benchmark (long lstm forward+backward, 2026-11-27), the batch slices' first timed sample was
# 83 us a step and the next ones 58 and 51, while the whole-batch plan ran 58, 58, 65; with
# two samples each the mean kept the slower plan until the next round.
TUNE_CALLS = 3
# The calls "auto" times before its first choice (after the untimed first call): TUNE_CALLS
# rounds of its candidate plans, at most three (executors.CpuExecutor._alternatives). A
# benchmark's warm-up covers them (benchmarks/bench_cpu.py, rnnlang.bench.spec).
CHOICE_CALLS = 3 * TUNE_CALLS
# After its first choice, "auto" times every candidate once more CHECK_FIRST calls later, then
# after twice as many calls each time, up to every CHECK_MAX calls, and keeps the plan whose
# last TUNE_WINDOW samples score best (executors._score). Why: the first samples are the least
# reliable (2026-11-27, 2-core EPYC, the benchmark's medium cases: right after other
# libraries' calls the whole-batch BLAS plan measured 9-103 ms where it then ran 5.4-7.5,
# and the one-thread plan was kept, 1.1-1.4x slower), and this VM's speed shifts within a process
# (one run: 9.4 ms a call for 20 calls, then 6.0). Cost: one call of each other plan per
# round, under 0.3% of calls once the rounds are CHECK_MAX apart.
CHECK_FIRST = 8
CHECK_MAX = 1024
TUNE_WINDOW = 4


def default_threads() -> int:
    """The CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def slices(batch: int, threads: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal row ranges, at least MIN_ROWS rows each."""
    n = max(1, min(threads, batch // MIN_ROWS))
    return [(k * batch // n, (k + 1) * batch // n) for k in range(n)]


def take(a: np.ndarray, axis: int | None, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` along ``axis`` as a contiguous array (the generated code's layout)."""
    if axis is None:
        return a
    return np.ascontiguousarray(a[(slice(None),) * axis + (slice(lo, hi),)])


def join(parts: Sequence[Sequence[np.ndarray]], plan: RowPlan, count: int | None = None
         ) -> list[np.ndarray]:
    """One result per output from per-slice results, as the plan says; only the first
    ``count`` outputs when given (a training forward's residuals stay per slice: joining
    them copied 11 MB a step at T=100, B=32, H=128, a fifth of the step)."""
    out = []
    for k, how in enumerate(plan.outputs[:count]):
        pieces = [p[k] for p in parts]
        if how[0] == "concat":
            out.append(np.concatenate(pieces, axis=int(how[1])))
        elif how[0] == "sum":
            total = pieces[0].copy()
            for x in pieces[1:]:
                total += x
            out.append(total)
        else:
            out.append(pieces[0])
    return out


class Pool:
    """A lazily started thread pool; the calling thread runs the first slice itself."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[int], R], n: int) -> list[R]:
        if n == 1:
            return [fn(0)]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                thread_name_prefix="rnnlang")
        futures = [self._pool.submit(fn, k) for k in range(1, n)]
        first = fn(0)
        return [first] + [f.result() for f in futures]
