"""Batch-slice parallelism: `rnnlang.ir.rows.row_plan` (which values depend on one batch row)
checked by running the reference interpreter on slices and joining as the plan says, and the
CPU executor's threaded slices against one thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import rnnlang
import rnnlang.executors
from rnnlang.interp import run_program
from rnnlang.ir.nodes import Eqn, InputInfo, Program, Var
from rnnlang.ir.rows import ROW, SUM, row_plan, step_gemm_flops
from rnnlang.ir.types import BATCH, Dim, TensorType
from rnnlang.parallel import join, slices, take

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SPLIT = [(0, 2), (2, 3), (3, 7)]  # uneven on purpose
B, T = 7, 5


def _inputs(m: rnnlang.Model, rng: np.random.Generator) -> tuple[dict, dict]:
    ins, lens = {}, {}
    for info in m.program.inputs:
        if info.role not in ("seq", "vec"):
            continue
        feat = info.var.shape[-1].evaluate(m.static)
        if info.role == "seq":
            ins[info.var.name] = rng.normal(size=(T, B, feat))
            lens[info.var.name] = rng.integers(1, T + 1, size=B)
        else:
            ins[info.var.name] = rng.normal(size=(B, feat))
    return ins, lens


def _cut(prog: Program, axes: tuple[int | None, ...], vals: dict, lo: int, hi: int) -> dict:
    out = dict(vals)
    for v, ax in zip(prog.input_vars, axes, strict=True):
        if v.name in vals:
            out[v.name] = take(vals[v.name], ax, lo, hi)
    return out


@pytest.mark.parametrize("name", ["tagger", "seq2seq", "cnn_rnn", "custom_cells", "tdnn",
                                  "generator", "gestures", "elman"])
def test_slices_joined_by_the_plan_equal_the_whole_batch(name: str) -> None:
    """Forward, and forward_train + backward with cotangents cut like the outputs: per-slice
    results joined (concatenated or summed) equal the whole-batch run, in float64."""
    m = rnnlang.compile(EXAMPLES / f"{name}.rnn", target="reference", dtype="float64")
    rng = np.random.default_rng(1)
    ins, lens = _inputs(m, rng)
    b = m._bind(ins, {}, lens, None)
    g = m.grad_programs()
    plans = {k: row_plan(p) for k, p in (("f", m.program), ("ft", g.forward),
                                         ("bw", g.backward))}
    assert all(p is not None for p in plans.values()), plans
    vals = {**m.params, **b.values}
    dt = np.dtype("float64")
    whole = run_program(m.program, vals, b.dims, dt)
    parts = [run_program(m.program, _cut(m.program, plans["f"].inputs, vals, lo, hi),
                         dict(b.dims, B=hi - lo), dt) for lo, hi in SPLIT]
    for got, want in zip(join(parts, plans["f"]), whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    n = len(m.program.outputs)
    outs = run_program(g.forward, vals, b.dims, dt)
    cots = {c.name: rng.normal(size=o.shape) for c, o in zip(g.cotangents, outs[:n],
                                                             strict=True)}
    res = {r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)}
    want_g = run_program(g.backward, {**vals, **res, **cots}, b.dims, dt)
    parts = []
    for lo, hi in SPLIT:
        d = dict(b.dims, B=hi - lo)
        fo = run_program(g.forward, _cut(g.forward, plans["ft"].inputs, vals, lo, hi), d, dt)
        r = {x.name: o for x, o in zip(g.residuals, fo[n:], strict=True)}
        parts.append(run_program(g.backward, {**_cut(g.backward, plans["bw"].inputs,
                                                     {**vals, **cots}, lo, hi), **r}, d, dt))
    kinds = {k.kind for k in plans["bw"].output_kinds}
    assert SUM in kinds and ROW in kinds  # weight gradients are sums, input gradients rows
    for got, want in zip(join(parts, plans["bw"]), want_g, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _var(name: str, *shape: Dim | int) -> Var:
    return Var(name, TensorType(tuple(Dim.of(d) for d in shape), "float64"))


def test_values_that_mix_rows_are_not_split() -> None:
    """A sum over the batch is fine as an output (partial sums add up) but not as the input
    of anything nonlinear."""
    x = _var("x", BATCH, 3)
    s = _var("s", 3)
    y = _var("y", 3)
    total = Eqn("sum_to", (x,), (s,), (("shape", (Dim.of(3),)),))
    plain = Program("p", (InputInfo(x, "vec"),), (), (total,), (s,), ("s",))
    plan = row_plan(plain)
    assert plan is not None and plan.outputs == (("sum",),) and plan.inputs == (0,)
    bent = Program("p", (InputInfo(x, "vec"),), (), (total, Eqn("tanh", (s,), (y,))), (y,),
                   ("y",))
    assert row_plan(bent) is None
    doubled = Program("p", (InputInfo(x, "vec"),), (), (total, Eqn("add", (s, s), (y,))),
                      (y,), ("y",))
    assert row_plan(doubled) is not None  # linear: still a sum
    folded = _var("f", Dim((("B", 2),)), 3)  # B inside a compound size: rows unknown
    assert row_plan(Program("p", (InputInfo(folded, "vec"),), (), (), (folded,),
                            ("f",))) is None


def test_slices() -> None:
    assert slices(32, 2) == [(0, 16), (16, 32)]
    assert slices(7, 2) == [(0, 7)]  # under 4 rows each: one slice
    assert slices(9, 4) == [(0, 4), (4, 9)]
    assert slices(1, 8) == [(0, 1)]


SPEC = """
model m(H = 6, F = 3) {
  input x: seq[F]
  enc = stack(lstm(H), 2) over x
  g = bidir(gru(H)) over enc
  output y = dense(g, 2)
  output z = last(g)
}
"""


def test_threads_match_one_thread(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU target on 3 threads (uneven slices of 13 rows, padded sequences) gives one
    thread's outputs and gradients up to rounding (float64: one JIT compile is enough)."""
    dtype = "float64"
    one = rnnlang.compile(SPEC, dtype=dtype, cache_dir=cache_dir, threads=1)
    three = rnnlang.compile(SPEC, dtype=dtype, cache_dir=cache_dir, threads=3)
    three.params = {k: v.copy() for k, v in one.params.items()}
    ex = three._executor()
    assert ex.split_forward and ex.split_train
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 13, 3)).astype(dtype)
    lens = rng.integers(1, 10, size=13)
    b = three._bind({"x": x}, {}, lens, None)
    assert len(ex._parts("forward", b, True)[0]) == 1  # too little work to be worth threads
    monkeypatch.setattr(rnnlang.executors, "MIN_FLOPS", 0)
    assert ex._parts("forward_train", b, True) == ([(0, 4), (4, 8), (8, 13)], False)
    cot = {"y": rng.normal(size=(9, 13, 2)).astype(dtype),
           "z": rng.normal(size=(13, 12)).astype(dtype)}
    tol = dict(rtol=1e-10, atol=1e-12)
    a, b = one.vjp({"x": x}, cot, lengths=lens), three.vjp({"x": x}, cot, lengths=lens)
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], **tol, err_msg=k)
    np.testing.assert_allclose(b.inputs["x"], a.inputs["x"], **tol)
    for k, v in one.forward({"x": x}, lengths=lens).items():
        np.testing.assert_allclose(three.forward({"x": x}, lengths=lens)[k], v, **tol)
    # large per-step GEMMs in a call that cannot be split: one whole-batch call, BLAS on the 3
    # threads; same numbers. A call that can be split still starts as slices.
    monkeypatch.setattr(rnnlang.executors, "WIDE_GEMM_FLOPS", 0)
    bound = three._bind({"x": x}, {}, lens, None)
    assert ex._parts("forward_train", bound, False) == ([(0, 13)], True)
    assert ex._parts("forward_train", bound, True) == ([(0, 4), (4, 8), (8, 13)], False)
    assert one._executor()._parts("forward_train", bound, False) == ([(0, 13)], False)  # 1 thread
    monkeypatch.setattr(ex, "split_train", False)
    monkeypatch.setattr(ex, "split_forward", False)
    w = three.vjp({"x": x}, cot, lengths=lens)
    for k in a.params:
        np.testing.assert_allclose(w.params[k], a.params[k], **tol, err_msg=k)
    np.testing.assert_allclose(w.inputs["x"], a.inputs["x"], **tol)
    for k, v in one.forward({"x": x}, lengths=lens).items():
        np.testing.assert_allclose(three.forward({"x": x}, lengths=lens)[k], v, **tol)
    # parallel= overrides the size rule either way
    slices = rnnlang.compile(SPEC, dtype=dtype, cache_dir=cache_dir, threads=3,
                             parallel="slices")
    assert slices._executor()._parts("forward_train", bound, True) == (
        [(0, 4), (4, 8), (8, 13)], False)
    monkeypatch.setattr(rnnlang.executors, "WIDE_GEMM_FLOPS", float("inf"))
    blas = rnnlang.compile(SPEC, dtype=dtype, cache_dir=cache_dir, threads=3, parallel="blas")
    assert blas._executor()._parts("forward_train", bound, True) == ([(0, 13)], True)
    assert ex._parts("forward_train", bound, True) == ([(0, 4), (4, 8), (8, 13)], False)
    with pytest.raises(rnnlang.RnnUserError, match="threads"):
        rnnlang.compile(SPEC, threads=0)
    with pytest.raises(rnnlang.RnnUserError, match="parallel"):
        rnnlang.compile(SPEC, parallel="both")


def test_threaded_calls_select_the_threaded_blas(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call selects its BLAS (`blas.select`): batch slices and whole-batch calls with BLAS
    threads select the threaded one (SciPy's), one-thread calls the other (NumPy's)."""
    monkeypatch.setattr(rnnlang.executors, "MIN_FLOPS", 0)
    x = np.random.default_rng(0).normal(size=(5, 13, 3))
    for threads, parallel, want in ((3, "slices", True), (3, "blas", True), (1, "slices", False)):
        m = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=threads,
                            parallel=parallel)
        ex = m._executor()
        seen: list[bool] = []
        packs: list[bool] = []
        monkeypatch.setattr(ex, "_select_blas", seen.append)
        monkeypatch.setattr(ex, "_set_packing", packs.append)
        m.forward({"x": x})
        m.vjp({"x": x}, {"y": np.ones((5, 13, 2)), "z": np.ones((13, 12))})
        assert seen == [want] * 3  # forward; forward_train and backward
        # the loops pack their weights for rnnlang's kernel unless BLAS runs on threads
        wide = parallel == "blas" and ex._limit is not None
        assert packs == [not wide] * 3


def test_kernels_release_the_gil() -> None:
    """Batch slices run the generated code on several Python threads: a kernel that kept
    the GIL (the hoisted products did until 2026-11-27) made the slices wait for each other
    (T=1000, B=8, H=128 forward: 19-21 ms on two threads, one slice alone 12)."""
    from numba.core.registry import CPUDispatcher

    from rnnlang.codegen import blas, kernels, packed

    found = [(mod.__name__, name) for mod in (kernels, blas, packed)
             for name, fn in vars(mod).items()
             if isinstance(fn, CPUDispatcher) and not name.startswith("_")
             and not fn.targetoptions.get("nogil")]
    assert not found


def test_join_takes_only_the_outputs_asked_for() -> None:
    """A training forward's residuals stay with their slice (backward reads them there)."""
    from rnnlang.ir.rows import RowPlan

    parts = [[np.ones((2, 3)), np.zeros((2, 3))], [np.ones((1, 3)), np.zeros((1, 3))]]
    plan = RowPlan(inputs=(), outputs=(("concat", 0),) * 2, output_kinds=(ROW, ROW))
    assert [a.shape for a in join(parts, plan)] == [(3, 3), (3, 3)]
    assert [a.shape for a in join(parts, plan, 1)] == [(3, 3)]


SLICES, BLAS, ONE = (False, True), (True, False), (False, False)  # (wide, sliced) of a call


Cost = Callable[[tuple[bool, bool], dict[str, int]], float]


def _faked_auto(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, cost: Cost
                ) -> tuple[rnnlang.Model, list[tuple[bool, bool]]]:
    """A three-thread "auto" model whose generated-code calls advance a fake clock by
    ``cost(plan, sizes)`` (per slice: three slices cost three times), and the list of the
    plans its calls ran, (wide, sliced) each."""
    if rnnlang.compile(SPEC, cache_dir=cache_dir)._executor()._limit is None:
        pytest.skip("no controllable BLAS: whole-batch BLAS threads are not a candidate")
    monkeypatch.setattr(rnnlang.executors, "MIN_FLOPS", 0)
    m = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=3)
    ex = m._executor()
    now = [0.0]
    run, limited = ex._run, ex._limited
    plans: list[tuple[bool, bool]] = []

    def fake_run(fn: str, dims: dict[str, int], vals: dict[str, object],
                 *ws: object) -> object:
        now[0] += cost(plans[-1], dims)
        return run(fn, dims, vals, *ws)

    def spy(wide: bool, sliced: bool) -> object:
        plans.append((wide, sliced))
        return limited(wide, sliced)

    monkeypatch.setattr(ex, "_run", fake_run)
    monkeypatch.setattr(ex, "_limited", spy)
    monkeypatch.setattr(ex, "_clock", lambda: now[0])
    return m, plans


@pytest.mark.parametrize("fastest", [SLICES, BLAS, ONE])
def test_auto_times_the_plans_and_keeps_the_fastest(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fastest: tuple[bool, bool]) -> None:
    """parallel="auto": the first call of a size runs the size rule's plan (here batch slices)
    untimed, the next nine alternate batch slices, the whole batch with BLAS threads and the
    whole batch on one thread (timed), then the fastest stays. Time is faked: each
    generated-code call advances the clock by its plan's cost."""
    from rnnlang.parallel import TUNE_CALLS

    m, plans = _faked_auto(cache_dir, monkeypatch,
                           lambda plan, dims: 1.0 if plan == fastest else 10.0)
    x = np.random.default_rng(0).normal(size=(5, 13, 3))
    want = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=1).forward(
        {"x": x})
    for _ in range(3 * TUNE_CALLS + 3):
        got = m.forward({"x": x})
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12)
    assert plans == [SLICES] + [SLICES, BLAS, ONE] * TUNE_CALLS + [fastest] * 2


def test_step_gemm_flops_is_the_largest_per_step_product() -> None:
    m = rnnlang.compile("model m(H=6, F=5) { input x: seq[F]  h = lstm(H) over x "
                        "output y = h }", target="reference")
    # the hoisted x @ W is outside the loop; the loop's product is h[t-1] (B x H) @ U (H x 4H)
    assert step_gemm_flops(m.program, {"B": 3, "T:x": 7, **m.static}) == 2 * 3 * 6 * 24


def test_auto_keeps_the_plan_with_the_smallest_mean_not_the_luckiest_sample() -> None:
    """A plan that stalls now and then (threads waiting for a busy core) can have the best
    single sample and still be slower: the mean decides."""
    from rnnlang.executors import _Tune
    from rnnlang.parallel import TUNE_CALLS

    steady, lucky = ([(0, 4)], False), ([(0, 2), (2, 4)], False)
    tune = _Tune([lucky, steady])
    assert tune.pick() is None  # the first call runs untimed
    samples = {0: [1.0] + [30.0] * (TUNE_CALLS - 1), 1: [10.0] * TUNE_CALLS}
    while tune.best is None:
        k = tune.pick()
        assert k is not None
        tune.record(k, samples[k].pop())
    assert tune.best == steady


def test_one_far_off_sample_does_not_keep_a_slower_plan() -> None:
    """The first call after other libraries ran can take 20x longer on any plan (the
    benchmark's first timed batch-slices call: 83 us a step, then 58 and 51). Each plan is
    timed three times before the first choice and its largest sample does not count, so that
    choice is already right (with two samples, or with the largest counted, the slower plan
    was kept until the next rounds)."""
    from rnnlang.executors import _Tune
    from rnnlang.parallel import TUNE_CALLS

    assert TUNE_CALLS >= 3
    fast, slow = ([(0, 4)], True), ([(0, 4)], False)
    tune = _Tune([fast, slow])
    samples = {0: [5.0] * (TUNE_CALLS - 1) + [100.0], 1: [7.0] * TUNE_CALLS}  # popped from the end
    while tune.best is None:
        k = tune.pick()
        if k is not None:
            tune.record(k, samples[k].pop())
    assert tune.best == fast


def test_auto_times_the_plans_again_at_growing_intervals() -> None:
    """After the first choice, every candidate is timed once more CHECK_FIRST calls later, then
    after twice as many calls each time, up to every CHECK_MAX calls: over 5000 calls of
    three plans, 30 timed calls (20 on slower plans) after the first choice."""
    from rnnlang.executors import _Tune
    from rnnlang.parallel import CHECK_FIRST, CHECK_MAX, TUNE_CALLS

    cands = [([(0, 4)], False), ([(0, 4)], True), ([(0, 2), (2, 4)], False)]
    tune = _Tune(cands)
    timed = []
    for call in range(1, 5001):
        k = tune.pick()
        if k is not None:
            timed.append(call)
            tune.record(k, [3.0, 1.0, 2.0][k])
    first = 1 + TUNE_CALLS * len(cands)
    assert timed[:first - 1] == list(range(2, first + 1))
    starts, end, gap = [], first, CHECK_FIRST
    while end + gap <= 5000:
        starts.append(end + gap)
        end, gap = end + gap + len(cands) - 1, min(2 * gap, CHECK_MAX)
    assert timed[first - 1:] == [s + j for s in starts for j in range(len(cands))]
    assert len(starts) == 10 and tune.best == cands[1]
    # the last TUNE_WINDOW samples decide: a change after 5000 calls is followed within a few
    # rounds (with every sample kept, the ten rounds before it would outweigh it until ~15000)
    for _call in range(5001, 9001):
        k = tune.pick()
        if k is not None:
            tune.record(k, [3.0, 2.0, 1.0][k])
    assert tune.best == cands[2]


def test_auto_picks_safely_when_another_thread_took_the_last_timed_call() -> None:
    """Calls from several threads share a size's `_Tune`: a thread that saw one queued plan
    left may find the queue empty when it takes it (another thread took it in between).
    It then runs the settled plan untimed instead of raising."""
    from rnnlang.executors import _Tune

    class Raced(list):  # non-empty when tested, empty when taken
        def __bool__(self) -> bool:
            return True

    tune = _Tune([([(0, 4)], True), ([(0, 4)], False)])
    tune.queue = Raced()
    tune.due = 0
    assert tune.pick() is None


def test_auto_follows_a_change_of_the_fastest_plan(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine changes under a running model (another process starts, the VM's speed
    shifts): the one-thread plan was fastest when measured, whole-batch BLAS is from the call
    after the first choice on. The later rounds see it, and the model moves to it. Time is
    faked as above."""
    from rnnlang.parallel import CHECK_FIRST, TUNE_CALLS

    first = 1 + 3 * TUNE_CALLS  # the call after which the first choice is made

    def cost(plan: tuple[bool, bool], dims: dict[str, int]) -> float:
        # ``plans`` (bound below) holds one entry per call so far
        return 1.0 if plan == (ONE if len(plans) <= first else BLAS) else 10.0

    m, plans = _faked_auto(cache_dir, monkeypatch, cost)
    ref = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=1)
    x = np.random.default_rng(2).normal(size=(5, 13, 3))
    want = ref.forward({"x": x})
    for call in range(120):
        got = m.forward({"x": x})
        if call % 10 == 0:
            for k, v in want.items():
                np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12)
    again = first + CHECK_FIRST - 1
    assert plans[first:again] == [ONE] * (CHECK_FIRST - 1)  # kept after the first rounds
    assert plans[again:again + 3] == [SLICES, BLAS, ONE]  # timed again
    assert plans[110:] == [BLAS] * 10


def test_auto_measures_once_per_octave_of_lengths_and_per_step(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lengths 5 to 8 share one measurement (the next power of two is 8), and plans are
    compared per step: the one-thread plan, measured on the longer calls, costs more per call
    but less per step, and is kept. Time is faked as in the test above."""
    m, plans = _faked_auto(cache_dir, monkeypatch,
                           lambda plan, dims: dims["T:x"] * (1.0 if plan == ONE else 1.5))
    ref = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=1)
    rng = np.random.default_rng(1)
    # the calls that measure the one-thread plan (4th, 7th, 10th) are the long ones: per call
    # it would lose (8 against 7.5 for a 5-step call on another plan), per step it wins
    for T in (5, 5, 5, 8, 5, 5, 8, 5, 5, 8, 6, 7):
        x = rng.normal(size=(T, 13, 3))
        got, want = m.forward({"x": x}), ref.forward({"x": x})
        for k, v in want.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12)
    assert plans == [SLICES] + [SLICES, BLAS, ONE] * 3 + [ONE, ONE]
    ex = m._executor()
    assert len([k for k in ex._octaves if k[0] == "forward"]) == 1
    assert len({id(t) for k, t in ex._tuning.items() if k[0] == "forward"}) == 1  # 5 to 8


def test_a_training_call_cuts_each_input_once_per_slice(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backward reads the slices of x (and mask, states) that forward_train was given instead
    of copying them again; only the cotangents are new."""
    monkeypatch.setattr(rnnlang.executors, "MIN_FLOPS", 0)
    m = rnnlang.compile(SPEC, dtype="float64", cache_dir=cache_dir, threads=2,
                        parallel="slices")
    cuts: list[tuple[int, int, int]] = []
    take = rnnlang.executors.take

    def spy(a: np.ndarray, axis: int | None, lo: int, hi: int) -> np.ndarray:
        cuts.append((id(a), lo, hi))
        return take(a, axis, lo, hi)

    monkeypatch.setattr(rnnlang.executors, "take", spy)
    x = np.random.default_rng(0).normal(size=(5, 13, 3))
    m.vjp({"x": x}, {"y": np.ones((5, 13, 2)), "z": np.ones((13, 12))})
    assert cuts and len(cuts) == len(set(cuts))
    assert sum(1 for c in cuts if c[0] == id(x)) == 2  # one per slice
