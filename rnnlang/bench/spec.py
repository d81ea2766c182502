"""Benchmark any spec: rnnlang's CPU code against a NumPy loop and a torch loop of the same model.

For a user's spec there is no hand-written baseline, so the baselines run the model's own IR
(the optimized forward program: input projections hoisted, gate matmuls fused):

* ``numpy-loop``: rnnlang's reference interpreter (``target="reference"``, `rnnlang.interp`):
  the time loop in Python, one NumPy call per equation per step; forward+backward interprets
  the derived BPTT program the same way.
* ``torch-loop`` (when torch is installed and every op has a torch form): the same program in
  eager PyTorch (`rnnlang.bench.torch_eval`), gradients by torch.autograd.

Forward+backward is the gradient of ``sum over all outputs of y * cot`` (a fixed random
cotangent per output) with respect to every parameter and every input and initial state.
Every baseline is checked against rnnlang before it is timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlang.bench import have_torch
from rnnlang.bench.timing import time_interleaved
from rnnlang.parallel import CHOICE_CALLS
from rnnlang.runtime import bind_inputs

if TYPE_CHECKING:
    from rnnlang.api import Model

MODES = ("fwd", "fwdbwd")
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}  # max |a - b| / max |b| per array
NUMPY_NOTE = ("numpy-loop = rnnlang's reference interpreter (target=\"reference\"): the same "
              "IR, the time loop in Python with one NumPy call per equation per step; its "
              "backward interprets the derived BPTT program")
TORCH_NOTE = ("torch-loop = the same IR op by op in eager PyTorch (rnnlang.bench.torch_eval), "
              "backward by torch.autograd")


@dataclass(frozen=True)
class BenchOptions:
    steps: int = 50
    batch: int = 8
    modes: tuple[str, ...] = MODES
    seed: int = 0
    # with the checking call and the estimate: the first calls, which parallel="auto" times to
    # choose its plan
    warmup: int = CHOICE_CALLS
    repeats: int = 11
    min_repeats: int = 3
    budget_s: float = 3.0  # timed rounds per mode, before cutting repeats
    min_sample_s: float = 0.02  # several calls per sample: the first after another backend is slow
    reference: bool = True
    torch: bool = True


@dataclass
class SpecBench:
    """Results: ``times[mode][backend]`` from `time_interleaved`, agreement, notes."""

    model: str
    steps: int
    batch: int
    dims: dict[str, int]
    dtype: str
    times: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> backend -> err
    notes: list[str] = field(default_factory=list)
    first_call_s: dict[str, float] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[str]:
        tol = TOLERANCE[self.dtype]
        return [f"{b} {mode}: max rel err {e:.2e} > {tol:g}"
                for mode, errs in self.errors.items() for b, e in errs.items() if not e <= tol]


class Runner:
    """One backend: ``fwd()`` and ``fwdbwd()`` are the timed calls; ``results(mode)`` gives
    outputs and gradients by name for the agreement check."""

    name = ""

    def fwd(self) -> Any:
        raise NotImplementedError

    def fwdbwd(self) -> Any:
        raise NotImplementedError

    def results(self, mode: str) -> dict[str, np.ndarray]:
        raise NotImplementedError


class ModelRunner(Runner):
    """A compiled model (rnnlang's CPU code, or the reference interpreter)."""

    def __init__(self, name: str, model: Model, inputs: dict[str, np.ndarray],
                 cots: dict[str, np.ndarray]):
        self.name, self.m, self.inputs, self.cots = name, model, inputs, cots

    def fwd(self) -> Any:
        return self.m.forward(self.inputs)

    def fwdbwd(self) -> Any:
        return self.m.vjp(self.inputs, self.cots)

    def results(self, mode: str) -> dict[str, np.ndarray]:
        if mode == "fwd":
            return dict(self.fwd())
        g = self.fwdbwd()
        return {**g.outputs, **g.params, **g.inputs}


class TorchRunner(Runner):
    """The model's forward program in eager torch; gradients of every leaf by autograd."""

    name = "torch-loop"

    def __init__(self, model: Model, inputs: dict[str, np.ndarray],
                 cots: dict[str, np.ndarray]):
        import torch

        from rnnlang.bench import torch_eval as te
        self.torch, self.te, self.m = torch, te, model
        self.dtype = te.torch_dtype(model.dtype)
        b = bind_inputs(model.program, model.static, inputs, None, None, model.dtype)
        self.dims = b.dims
        g = model.grad_programs()
        values = {**model.params, **b.values}
        self.grad_names = [v.name for v in g.grads_of if v.name in values]
        self.values = te.to_torch(values, self.dtype, frozenset(self.grad_names))
        self.leaves = [self.values[n] for n in self.grad_names]
        self.cots = [torch.from_numpy(np.ascontiguousarray(cots[n], dtype=model.dtype))
                     for n in model.output_names]

    def _run(self) -> list[Any]:
        return self.te.run_program(self.m.program, self.values, self.dims, self.dtype)

    def fwd(self) -> Any:
        with self.torch.no_grad():
            return self._run()

    def fwdbwd(self) -> Any:
        outs = self._run()
        return outs, self.torch.autograd.grad(outs, self.leaves, self.cots, allow_unused=True)

    def results(self, mode: str) -> dict[str, np.ndarray]:
        names = self.m.output_names
        if mode == "fwd":
            return {n: o.numpy() for n, o in zip(names, self.fwd(), strict=True)}
        outs, grads = self.fwdbwd()
        res = {n: o.detach().numpy() for n, o in zip(names, outs, strict=True)}
        for n, g, leaf in zip(self.grad_names, grads, self.leaves, strict=True):
            res[n] = np.zeros(tuple(leaf.shape), self.m.dtype) if g is None else g.numpy()
        return res


def rel_err(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """Max over the arrays of ``ref`` of max|got - ref| / max|ref| (inf when one is missing)."""
    worst = 0.0
    for k, r in ref.items():
        if k not in got:
            return float("inf")
        g = np.asarray(got[k], np.float64).reshape(r.shape)
        scale = float(np.max(np.abs(r))) if r.size else 1.0
        worst = max(worst, float(np.max(np.abs(g - r), initial=0.0)) / (scale or 1.0))
    return worst


def torch_unavailable(model: Model) -> list[str]:
    """Why the torch-loop baseline cannot run this model: one line per reason (empty: it can)."""
    if not have_torch():
        return ["torch loop: not available (PyTorch is not installed)"]
    from rnnlang.bench.torch_eval import unsupported_ops
    g = model.grad_programs()
    ops = unsupported_ops(model.program) or unsupported_ops(g.forward)
    return [f"torch loop: not available for this spec (op {op})" for op in ops]


def make_runners(model: Model, ref: Model | None, opts: BenchOptions,
                 notes: list[str]) -> list[Runner]:
    """rnnlang first, then the baselines that apply, all on the same data and parameters."""
    from rnnlang.viz.gradflow import random_inputs
    rng = np.random.default_rng(opts.seed)
    inputs = random_inputs(model, opts.steps, opts.batch, rng)
    outs = model.forward(inputs)  # also allocates parameters whose sizes come from the data
    cots = {k: rng.standard_normal(v.shape).astype(model.dtype) for k, v in outs.items()}
    runners: list[Runner] = [ModelRunner("rnnlang", model, inputs, cots)]
    if ref is not None:
        ref.params = {k: v.copy() for k, v in model.params.items()}
        runners.append(ModelRunner("numpy-loop", ref, inputs, cots))
        notes.append(NUMPY_NOTE)
    if opts.torch:
        why = torch_unavailable(model)
        notes.extend(why)
        if not why:
            runners.append(TorchRunner(model, inputs, cots))
            notes.append(TORCH_NOTE)
    return runners


def bench_spec(model: Model, ref: Model | None, opts: BenchOptions) -> SpecBench:
    """Time ``model`` (a CPU-target Model) against the baselines; ``ref`` is the same spec
    compiled for the reference target (None: no NumPy baseline)."""
    res = SpecBench(model.name, opts.steps, opts.batch, {}, model.options.dtype)
    t0 = time.perf_counter()
    runners = make_runners(model, ref, opts, res.notes)
    res.first_call_s["fwd"] = time.perf_counter() - t0
    res.dims = dict(sorted(model.static.items()))
    for mode in opts.modes:
        t0 = time.perf_counter()
        want = runners[0].results(mode)
        res.first_call_s.setdefault(mode, time.perf_counter() - t0)
        res.errors[mode] = {r.name: rel_err(want, r.results(mode)) for r in runners[1:]}
        fns: dict[str, Callable[[], Any]] = {r.name: getattr(r, mode) for r in runners}
        res.times[mode] = time_interleaved(fns, warmup=opts.warmup, repeats=opts.repeats,
                                           min_repeats=opts.min_repeats, budget_s=opts.budget_s,
                                           min_sample_s=opts.min_sample_s)
    return res


def _ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def table_text(res: SpecBench) -> str:
    """The Markdown table: median ms per call and baseline_time / rnnlang_time per backend."""
    backends = list(dict.fromkeys(b for t in res.times.values() for b in t if b != "rnnlang"))
    head = ["mode", "rnnlang ms", "rnnlang tok/s"] + [f"{b} ms (ratio)" for b in backends]
    rows = []
    for mode, t in res.times.items():
        base = t["rnnlang"]["median_s"]
        row = [mode, _ms(base), f"{res.steps * res.batch / base:.3g}"]
        for b in backends:
            med = t[b]["median_s"] if b in t else None
            row.append("n/a" if med is None else f"{_ms(med)} ({med / base:.2f}x)")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def report_text(res: SpecBench, source: str, threads: int) -> str:
    """Everything ``rnnc bench`` prints: header, baselines, first calls, agreement, table."""
    dims = ", ".join(f"{k}={v}" for k, v in res.dims.items())
    out = [f"rnnc bench: model {res.model} from {source}, T={res.steps}, B={res.batch}"
           + (f" ({dims})" if dims else "") + f", {res.dtype}, {threads} threads"]
    out += [f"  {n}" for n in res.notes]
    out.append("  first calls (JIT compile, not timed below): " + ", ".join(
        f"{m} {s:.2f} s" for m, s in res.first_call_s.items()))
    tol = TOLERANCE[res.dtype]
    for mode, errs in res.errors.items():
        if errs:
            out.append(f"  agreement with rnnlang, {mode}: " + ", ".join(
                f"{b} {e:.1e}" for b, e in errs.items()) + f" (max rel err; tolerance {tol:g})")
    reps = max((t["repeats"] for tm in res.times.values() for t in tm.values()), default=0)
    out.append(f"  median ms per call over {reps} interleaved rounds; ratio = baseline time / "
               "rnnlang time (> 1: rnnlang is faster); fwdbwd = forward + gradients of "
               "sum(y * cot) over all outputs for every parameter, input and initial state")
    return "\n".join(out) + "\n\n" + table_text(res)


__all__ = ["BenchOptions", "SpecBench", "bench_spec", "rel_err", "report_text", "table_text",
           "torch_unavailable"]
