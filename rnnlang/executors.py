"""Backends that run a model's programs: the NumPy reference interpreter and generated CPU code.

Both take bound values (parameters, inputs, masks, states) and return outputs; the training path
runs the forward program with residual outputs and then the backward program.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlang.codegen.workspace import Workspace
from rnnlang.interp import run_program
from rnnlang.ir.rows import ROW, SUM, RowPlan, row_flops, row_plan, step_gemm_flops
from rnnlang.parallel import (
    CHECK_FIRST,
    CHECK_MAX,
    MIN_FLOPS,
    MIN_ROWS,
    TUNE_CALLS,
    TUNE_WINDOW,
    WIDE_GEMM_FLOPS,
    Pool,
    default_threads,
    join,
    slices,
    take,
)
from rnnlang.runtime import Bound

if TYPE_CHECKING:
    from rnnlang.api import Model

Seeds = Callable[[list[np.ndarray]], list[np.ndarray]]


class ReferenceExecutor:
    """Runs the IR with the NumPy interpreter (target="reference")."""

    source = "# the reference target interprets the IR; there is no generated code\n"

    def __init__(self, model: Model):
        self.m = model

    def _values(self, b: Bound) -> dict[str, np.ndarray]:
        v = dict(self.m.params)
        v.update(b.values)
        return v

    def forward(self, b: Bound) -> list[np.ndarray]:
        return run_program(self.m.program, self._values(b), b.dims, self.m.dtype)

    def forward_backward(self, b: Bound, seeds: Seeds) -> tuple[list[np.ndarray],
                                                                list[np.ndarray]]:
        g = self.m.grad_programs()
        vals = self._values(b)
        outs = run_program(g.forward, vals, b.dims, self.m.dtype)
        n = len(self.m.program.outputs)
        vals.update({r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)})
        vals.update({c.name: s for c, s in zip(g.cotangents, seeds(outs[:n]), strict=True)})
        return outs[:n], run_program(g.backward, vals, b.dims, self.m.dtype)


class CpuExecutor:
    """Generated, Numba-compiled code; each function compiles on first use.

    A call whose batch rows are independent runs as batch slices on ``options.threads``
    threads (see `rnnlang.parallel`): the forward pass per slice, the loss on the joined
    outputs, the backward pass per slice from that slice's residuals, weight gradients added
    up."""

    def __init__(self, model: Model):
        from rnnlang.codegen.blas import select
        from rnnlang.codegen.load import load_module
        from rnnlang.codegen.module import emit_cpu_module
        from rnnlang.codegen.packed import set_packing

        self.m = model
        g = model.grad_programs()
        self.programs = {"forward": model.program, "forward_train": g.forward,
                         "backward": g.backward}
        self.source, self.syms = emit_cpu_module(
            self.programs, dtype=model.options.dtype, source_name=model.source_name,
            source_text=model.source_text, passes=tuple(model.pass_log.applied))
        self.module = load_module(self.source, model.options.cache_dir)
        self._limit = _blas_limiter(model.options.blas_threads)
        self._select_blas = select
        self._set_packing = set_packing
        self.pool = Pool(model.options.threads or default_threads())
        self._tuning: dict[tuple[Any, ...], _Tune] = {}  # by exact sizes
        self._octaves: dict[tuple[Any, ...], _Tune] = {}  # the same, by octave of lengths
        self._clock = time.perf_counter
        self.plans = {k: row_plan(p) for k, p in self.programs.items()}
        self.split_forward, self.split_train = _splittable(self.plans, g, len(
            model.program.outputs))
        self._handed = {"forward": None, "forward_train": len(model.program.outputs),
                        "backward": None}
        # a function compiled whole (a loop that could not be outlined) takes no workspace
        self._whole = {fn: hasattr(getattr(self.module, fn), "py_func") for fn in self.programs}
        self._local = threading.local()
        self._args = {fn: [v.name for v in p.param_vars + p.input_vars]
                      for fn, p in self.programs.items()}
        self._dims: dict[tuple[int, ...], np.ndarray] = {}

    def _spaces(self) -> dict[int, Workspace]:
        """The calling thread's workspaces, one per batch slice, shared by the functions
        (scratch slots are dead when a function returns): the arrays a call drops are kept
        for the next call (`rnnlang.codegen.workspace`). Per calling thread, so that calls
        from several threads never share one; the slices' tasks get their workspace from the
        caller, whichever pool thread runs them."""
        spaces: dict[int, Workspace] | None = getattr(self._local, "spaces", None)
        if spaces is None:
            spaces = self._local.spaces = {}
        return spaces

    def _workspaces(self, n: int, spaces: dict[int, Workspace] | None = None
                    ) -> list[Workspace]:
        """The workspaces of slices 0..n-1, from ``spaces`` (default: the thread's)."""
        spaces = self._spaces() if spaces is None else spaces
        out = []
        for k in range(n):
            ws = spaces.get(k)
            if ws is None:
                ws = spaces[k] = Workspace()
            out.append(ws)
        return out

    def workspace_bytes(self) -> int:
        """Bytes held between calls by the calling thread's workspaces."""
        return sum(ws.nbytes for ws in self._spaces().values())

    def release_workspaces(self) -> None:
        self._local.spaces = {}

    def _run(self, fn: str, dims: dict[str, int], vals: dict[str, Any],
             ws: Workspace) -> list[np.ndarray]:
        sizes = tuple([dims[s] for s in self.syms[fn]])
        d = self._dims.get(sizes)
        if d is None:  # read-only in generated code: one array per sizes serves every call
            if len(self._dims) >= 256:
                self._dims.clear()
            d = self._dims[sizes] = np.array(sizes, dtype=np.int64)
        call = getattr(self.module, fn)
        args = [vals[k] for k in self._args[fn]]
        if self._whole[fn]:  # compiled whole: it allocates with NumPy
            return list(call(*args, d))
        out = list(call(*args, d, ws))
        n = self._handed[fn]
        if n is None:
            return ws.detached(out)
        # residuals live past this call: none may be a view of scratch that backward reuses
        return ws.detached(out[:n]) + ws.detached(out[n:], scratch_only=True)

    def _limited(self, wide: bool, sliced: bool) -> Any:
        """The BLAS settings for one call: its library (`rnnlang.codegen.blas.select`: NumPy's
        OpenBLAS only for calls on one thread) and its thread count."""
        self._select_blas(wide or sliced)
        self._set_packing(not wide)
        if self._limit is None:
            return nullcontext()
        return self._limit(self.pool.threads if wide else None)

    def _wide(self, fn: str, b: Bound) -> bool:
        """Whether this call's per-step GEMMs are big enough to share between BLAS threads."""
        mode = self.m.options.parallel
        if self._limit is None or self.pool.threads == 1 or mode == "slices":
            return False
        return mode == "blas" or step_gemm_flops(self.programs[fn], b.dims) >= WIDE_GEMM_FLOPS

    def _choose(self, fn: str, b: Bound, split: bool) -> tuple[
            list[tuple[int, int]], bool, Callable[[float], None] | None]:
        """The plan of this call: batch slices and whether it runs whole with BLAS threads, and,
        when ``parallel="auto"`` times this call, what to call with its duration.

        Which is faster, two batch slices on two threads or one whole-batch call with BLAS on
        both, was not stable across hours on the reference VM (T=1000, B=8 GRU forward: slices
        18 against 24 ms one night, whole 21 against 34 ms the next morning, each interleaved
        in one process), so "auto" measures instead of trusting a size rule alone: for each
        sizes, the first call runs the size rule's plan untimed (it may include the JIT),
        then `_Tune` alternates the candidates, keeps the fastest, and measures again now and
        then (`rnnlang.parallel.CHECK_FIRST`).

        Sequence lengths count by the next power of two, and times per step: a caller whose
        lengths vary (a length-bucketed data set, streaming chunks) measures once per octave
        of lengths, not on the first ten calls of every length."""
        exact = (fn, split, WIDE_GEMM_FLOPS, MIN_FLOPS, tuple(sorted(b.dims.items())))
        tune = self._tuning.get(exact)  # per exact sizes first: this lookup is on every call
        if tune is None:
            if len(self._tuning) >= 256:  # sizes without end: start over
                self._tuning.clear()
                self._octaves.clear()
            octave = exact[:4] + (tuple(sorted(
                (k, 1 << (v - 1).bit_length() if k.startswith("T:") else v)
                for k, v in b.dims.items())),)
            tune = self._octaves.get(octave)
            if tune is None:
                rule = self._parts(fn, b, split)
                cands = [rule]
                if self.m.options.parallel == "auto":
                    cands += [c for c in self._alternatives(fn, b, split) if c != rule]
                tune = self._octaves[octave] = _Tune(cands)
            self._tuning[exact] = tune
        k = tune.pick()
        if k is None:
            plan = tune.best or tune.cands[0]
            return plan[0], plan[1], None
        steps = sum(v for name, v in b.dims.items() if name.startswith("T:")) or 1
        return tune.cands[k][0], tune.cands[k][1], lambda dt: tune.record(k, dt / steps)

    def _alternatives(self, fn: str, b: Bound, split: bool) -> list[
            tuple[list[tuple[int, int]], bool]]:
        """The plans "auto" may measure: whole batch with BLAS threads, whole batch on one
        thread (small per-step GEMMs: the second thread's share costs more than it saves, and
        a one-thread plan does not wait for a core another process is using), batch slices."""
        batch = b.dims.get("B", 1)
        out: list[tuple[list[tuple[int, int]], bool]] = []
        if self._limit is not None and self.pool.threads > 1:
            out.append(([(0, batch)], True))
            out.append(([(0, batch)], False))
        if self._sliceable(fn, b, split):
            out.append((slices(batch, self.pool.threads), False))
        return out

    def _sliceable(self, fn: str, b: Bound, split: bool) -> bool:
        """Batch slices may run: rows independent, several threads, enough rows and work."""
        batch = b.dims.get("B", 1)
        return split and self.pool.threads > 1 and batch >= 2 * MIN_ROWS and row_flops(
            self.programs[fn], b.dims) * batch >= MIN_FLOPS

    def _parts(self, fn: str, b: Bound, split: bool) -> tuple[list[tuple[int, int]], bool]:
        """The size rule: batch slices where the rows may be split and there is enough work,
        else one whole-batch call, with BLAS on every thread for large per-step GEMMs
        (`rnnlang.parallel.WIDE_GEMM_FLOPS`). `_choose` applies it once per sizes, and with
        ``parallel="auto"`` measures it against the other plans."""
        batch = b.dims.get("B", 1)
        if self.m.options.parallel != "blas" and self._sliceable(fn, b, split):
            return slices(batch, self.pool.threads), False
        return [(0, batch)], self._wide(fn, b)

    def _sliced(self, fn: str, part: tuple[int, int], b: Bound, vals: dict[str, Any],
                whole: dict[str, Any], cut: dict[tuple[str, int | None], Any] | None = None
                ) -> tuple[dict[str, int], dict[str, Any]]:
        """Sizes and arguments of ``fn`` for rows ``part``: ``vals`` cut, ``whole`` as is.
        ``cut`` keeps this slice's copies for the next function of the same call (backward
        reads the inputs forward_train was given: cutting them again cost a copy each)."""
        plan = self.plans[fn]
        assert plan is not None
        lo, hi = part
        out = dict(whole)
        for v, axis in zip(self.programs[fn].input_vars, plan.inputs, strict=True):
            if v.name in vals:
                key = (v.name, axis)
                if cut is not None and key in cut:
                    out[v.name] = cut[key]
                    continue
                out[v.name] = take(vals[v.name], axis, lo, hi)
                if cut is not None:
                    cut[key] = out[v.name]
        return dict(b.dims, B=hi - lo), out

    def forward(self, b: Bound) -> list[np.ndarray]:
        parts, wide, timed = self._choose("forward", b, self.split_forward)
        ws = self._workspaces(len(parts))
        t0 = self._clock()
        with self._limited(wide, len(parts) > 1):
            if len(parts) == 1:
                out = self._run("forward", b.dims, {**self.m.params, **b.values}, ws[0])
            else:
                out = join(self.pool.map(lambda k: self._run("forward", *self._sliced(
                    "forward", parts[k], b, b.values, self.m.params), ws[k]), len(parts)),
                    self.plans["forward"])  # type: ignore[arg-type]
        if timed is not None:
            timed(self._clock() - t0)
        return out

    def forward_backward(self, b: Bound, seeds: Seeds) -> tuple[list[np.ndarray],
                                                                list[np.ndarray]]:
        n = len(self.m.program.outputs)
        parts, wide, timed = self._choose("forward_train", b, self.split_train)
        # residuals live in the workspaces' residual slots until backward has run: a training
        # call made meanwhile from ``seeds`` (a loss that trains the model) gets workspaces of
        # its own (a forward call uses scratch slots only, dead by then)
        nested = getattr(self._local, "training", False)
        ws = self._workspaces(len(parts), {} if nested else None)
        g = self.m.grad_programs()
        t0 = self._clock()

        cuts: list[dict[tuple[str, int | None], Any]] = [{} for _ in parts]

        def ahead(k: int) -> list[np.ndarray]:
            if len(parts) == 1:
                return self._run("forward_train", b.dims, {**self.m.params, **b.values}, ws[k])
            return self._run("forward_train", *self._sliced(
                "forward_train", parts[k], b, b.values, self.m.params, cuts[k]), ws[k])

        with self._limited(wide, len(parts) > 1):
            fwd = self.pool.map(ahead, len(parts))
        plan = self.plans["forward_train"]
        outs = fwd[0][:n] if len(parts) == 1 else join(fwd, plan, n)  # type: ignore[arg-type]
        self._local.training = True  # the only user code between forward_train and backward
        try:
            cots = {c.name: s for c, s in zip(g.cotangents, seeds(outs), strict=True)}
        finally:
            self._local.training = nested

        def back(k: int) -> list[np.ndarray]:
            res = {r.name: o for r, o in zip(g.residuals, fwd[k][n:], strict=True)}
            if len(parts) == 1:
                return self._run("backward", b.dims, {**self.m.params, **b.values, **res,
                                                      **cots}, ws[k])
            return self._run("backward", *self._sliced(
                "backward", parts[k], b, {**b.values, **cots}, {**self.m.params, **res},
                cuts[k]), ws[k])

        with self._limited(wide, len(parts) > 1):
            grads = self.pool.map(back, len(parts))
        res = grads[0] if len(parts) == 1 else join(grads, self.plans["backward"])  # type: ignore[arg-type]
        if timed is not None:
            timed(self._clock() - t0)
        return outs, res


class _Tune:
    """Times a call's candidate plans and keeps the fastest, and times them again now and then.

    The first call runs the rule's plan untimed (it may include the JIT); then `TUNE_CALLS`
    rounds time each candidate in turn, and the fastest (`_score`) is `best`. Later rounds
    time each candidate once more: `CHECK_FIRST` calls after the first choice, then after
    twice as many calls each time, up to every `CHECK_MAX` calls, and each round decides again
    from the last `TUNE_WINDOW` samples of each plan (why: `rnnlang.parallel`). A single
    candidate is never timed."""

    def __init__(self, cands: list[tuple[list[tuple[int, int]], bool]]) -> None:
        self.cands = cands
        self.times: list[list[float]] = [[] for _ in cands]
        self.calls = 0
        self.best: tuple[list[tuple[int, int]], bool] | None = None
        # the candidates the next timed calls run, from call `due` on
        self.queue = [k for _ in range(TUNE_CALLS) for k in range(len(cands))]
        self.due: float = 2
        self.gap = CHECK_FIRST
        if len(cands) == 1:
            self.best, self.due = cands[0], math.inf

    def pick(self) -> int | None:
        """The candidate this call runs and times; None: `best` (before the first choice, the
        rule's plan), untimed."""
        self.calls += 1
        if self.calls < self.due:
            return None
        if not self.queue:  # a new round (or the last one's final call raised: time it again)
            self.queue = list(range(len(self.cands)))
        try:
            return self.queue.pop(0)
        except IndexError:  # a call on another thread took the last one since the test above
            return None

    def record(self, k: int, seconds: float) -> None:
        times = self.times[k]
        times.append(seconds)
        del times[:-TUNE_WINDOW]
        if self.queue:
            return
        fastest = min(range(len(self.cands)), key=lambda j: _score(self.times[j]))
        self.best = self.cands[fastest]
        self.due, self.gap = self.calls + self.gap, min(2 * self.gap, CHECK_MAX)


def _score(times: list[float]) -> float:
    """A plan's time from its recent samples: their mean, without the largest of three or more.

    The mean, not the best sample: a plan with BLAS threads or batch slices stalls now and then
    when the other core is busy (medium mgu forward on batch slices: best 4.8 ms, median 7.7;
    one thread 6.4 and 6.7), and a lucky sample must not keep it (measured 2026-11-27 from
    pairs of samples like the ones kept here: the best-sample rule kept plans 4% slower on
    average, the mean none). Without the largest: one sample can be far off, whatever the
    plan (the benchmark's first medium elman training call after other libraries ran: 103 ms
    on whole-batch BLAS, which then ran 5.4-6.7 ms a call), and it would stay in the mean for
    `TUNE_WINDOW` rounds."""
    if not times:
        return math.inf
    if len(times) >= 3:
        return (sum(times) - max(times)) / (len(times) - 1)
    return sum(times) / len(times)


def _splittable(plans: dict[str, RowPlan | None], g: Any, n: int) -> tuple[bool, bool]:
    """Whether inference, and training, may run as batch slices: every model output is a
    row value; the residuals handed from forward_train to backward are per-slice values the
    backward program reads as such; the cotangents are cut like the outputs."""
    fwd, ft, bwd = plans["forward"], plans["forward_train"], plans["backward"]
    rows = fwd is not None and all(k.kind == ROW for k in fwd.output_kinds)
    if not rows or ft is None or bwd is None:
        return rows, False
    if any(k.kind == SUM for k in ft.output_kinds) or any(
            k.kind != ROW for k in ft.output_kinds[:n]):
        return rows, False
    axis = dict(zip((v.name for v in g.backward.input_vars), bwd.inputs, strict=True))
    handed = list(zip(g.residuals, ft.output_kinds[n:], strict=True)) + list(
        zip(g.cotangents, ft.output_kinds[:n], strict=True))
    ok = all(axis.get(v.name) == (k.axis if k.kind == ROW else None) for v, k in handed)
    return rows, ok


def _blas_limiter(threads: int | None) -> Callable[[], Any] | None:
    """Limit the BLAS libraries that generated code calls (`rnnlang.codegen.blas`: SciPy's
    OpenBLAS, and NumPy's when it was bound) while generated code runs.

    The time loop makes one small GEMM per step; OpenBLAS worker threads waking for each of
    them cost far more than they save, and stall badly when another process holds a core
    (measured: a 2-layer LSTM step 40-90x slower with 2 threads on a busy 2-core machine).
    Only those libraries are limited, and only during the call (OpenBLAS's count is per
    process: NumPy code running on another thread meanwhile sees the limit too)."""
    if threads is None:
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    from rnnlang.codegen import blas
    ctl = ThreadpoolController()
    found = [info["filepath"] for info in ctl.info() if info.get("user_api") == "blas"]
    # SciPy's wheels keep their OpenBLAS in scipy.libs/ (NumPy's, also named
    # libscipy_openblas..., lives in numpy.libs/); other installs: any path naming scipy
    paths = [p for p in found if os.path.basename(os.path.dirname(p)) == "scipy.libs"] or [
        p for p in found if "scipy" in p and "numpy" not in p]
    if blas.LIBRARY is not None:  # NumPy's, which one-thread calls use
        bound = os.path.realpath(blas.LIBRARY)
        paths += [p for p in found if os.path.realpath(p) == bound]
    libs = ctl.select(filepath=paths) if paths else ctl.select(user_api="blas")
    if not libs.lib_controllers:
        return None
    calls = [_thread_calls(lib) for lib in libs.lib_controllers]
    return lambda wide=None: _BlasThreads(calls, wide or threads)


def _thread_calls(lib: Any) -> tuple[Callable[[], int], Callable[[int], Any]]:
    """The library's own get/set of its thread count: for OpenBLAS's pthreads build the C
    functions themselves (threadpoolctl's wrappers look the symbols up and take a lock on
    every call: 6.5 us of a 140 us small forward), otherwise threadpoolctl's methods."""
    symbol = getattr(lib, "_get_symbol", None)  # threadpoolctl internals: may change
    if symbol is not None and getattr(lib, "threading_layer", None) != "openmp":
        get, set_ = symbol("openblas_get_num_threads"), symbol("openblas_set_num_threads")
        if get is not None and set_ is not None:
            return get, set_
    return lib.get_num_threads, lib.set_num_threads


class _BlasThreads:
    """Sets the BLAS thread count for one call and restores it after: one C call each, not
    threadpoolctl's ``limit()``, which re-reads every library's info on each use (measured 24
    us a call, 15% of a small forward)."""

    def __init__(self, calls: list[tuple[Callable[[], int], Callable[[int], Any]]],
                 n: int) -> None:
        self.calls, self.n, self.prev = calls, n, [0] * len(calls)

    def __enter__(self) -> None:
        for k, (get, set_) in enumerate(self.calls):
            self.prev[k] = get()
            if self.prev[k] != self.n:
                set_(self.n)

    def __exit__(self, *exc: object) -> None:
        for k, (_get, set_) in enumerate(self.calls):
            if self.prev[k] != self.n:
                set_(self.prev[k])


def check_cuda_available() -> None:
    """Raise the user error (E700) when the CUDA target cannot run here."""
    from rnnlang.executors_cuda import require_cuda
    require_cuda()


def make_executor(model: Model) -> Any:
    if model.options.target == "reference":
        return ReferenceExecutor(model)
    if model.options.target == "cuda":
        from rnnlang.executors_cuda import CudaExecutor
        return CudaExecutor(model)
    return CpuExecutor(model)
