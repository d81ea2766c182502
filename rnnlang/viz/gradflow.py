"""The vanishing-gradient picture: how much of a loss at the last step reaches earlier states.

The loss is a fixed random projection of every output at its last step (or of the whole output
when it has no time axis): ``L = sum_o <r_o, y_o[T-1]>``. Its gradient with respect to each
recurrent state at every step is read straight from the derived BPTT: the reverse scan of a
layer accumulates ``dL/ds_t`` in its ``acc.<state>`` array, so running the backward program in
the IR interpreter and keeping those arrays gives ``dL/ds_{T-1-k}`` for every ``k`` at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rnnlang.diagnostics import InternalCompilerError, error
from rnnlang.interp import run_eqns, run_program
from rnnlang.ir.nodes import Eqn, ScanSpec, Tap

if TYPE_CHECKING:
    from rnnlang.api import Model

MAX_STEPS = 10_000


@dataclass(frozen=True)
class StateFlow:
    """``grads[t]`` is dL/ds_t, shape (T, B, n); ``norms[k]`` the mean over the batch of
    ``||dL/ds_{T-1-k}||`` (k = 0 is the last step)."""

    layer: str
    state: str
    cell: str
    grads: np.ndarray
    norms: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.layer}.{self.state}"


@dataclass
class GradFlow:
    model: str
    steps: int
    batch: int
    loss: float
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # output -> r in the loss
    flows: list[StateFlow] = field(default_factory=list)


def random_inputs(m: Model, steps: int, batch: int, rng: np.random.Generator,
                  ) -> dict[str, np.ndarray]:
    """Standard normal data for every sequence and vector input of the model."""
    out: dict[str, np.ndarray] = {}
    for info in m.program.inputs:
        if info.role not in ("seq", "vec"):
            continue
        feat = info.var.shape[-1]
        missing = [s for s in feat.symbols if s not in m.static]
        if missing:
            raise error("E605", f"size {', '.join(missing)} of input '{info.var.name}' is unknown",
                        None, hint=f"give it with -D {missing[0]}=...")
        f = feat.evaluate(m.static)
        shape = (steps, batch, f) if info.role == "seq" else (batch, f)
        out[info.var.name] = rng.normal(size=shape)
    return out


def _state_arrays(spec: ScanSpec) -> list[int]:
    """Written arrays that the body reads back (at t-k): the recurrent states."""
    out: list[int] = []
    for b in spec.in_bind:
        if isinstance(b, Tap) and b.source[0] == "out" and b.source[1] not in out:
            out.append(b.source[1])
    return sorted(out)


def _pair_scans(fwd: tuple[Eqn, ...], bwd: tuple[Eqn, ...]) -> list[tuple[Eqn, Eqn]]:
    """Each forward scan with the reverse scan derived from it.

    BPTT emits reverse scans while sweeping the forward program backwards, so they come in
    the opposite order; a forward scan that no output depends on has none (skipped).
    """
    fscans = [e for e in fwd if e.op == "scan"]
    rscans = [e for e in bwd if e.op == "scan" and e.attr("scan").reverse]
    pairs: list[tuple[Eqn, Eqn]] = []
    i = 0
    for f in reversed(fscans):
        if i >= len(rscans):
            break
        r = rscans[i]
        fs: ScanSpec = f.attr("scan")
        rs: ScanSpec = r.attr("scan")
        names = [f"acc.{a.name}" for a in fs.arrays]
        if f.span == r.span and [a.name for a in rs.arrays[: len(names)]] == names:
            pairs.append((f, r))
            i += 1
    if i != len(rscans):
        raise InternalCompilerError("gradflow: cannot match reverse scans to forward scans")
    return list(reversed(pairs))


def _layer_of(var_name: str, array_name: str) -> str:
    suffix = "." + array_name
    return var_name[: -len(suffix)] if var_name.endswith(suffix) else var_name


def gradient_flow(m: Model, steps: int, batch: int = 4, seed: int = 0,
                  inputs: Mapping[str, np.ndarray] | None = None) -> GradFlow:
    """dL/ds_t for every recurrent state of every layer, from the derived BPTT.

    ``L = sum_o <r_o, y_o[T-1]>`` with ``r_o`` random (kept in ``GradFlow.weights``). The
    state at step t is the tuple of a layer's recurrent arrays (LSTM: h and c); each one's
    gradient is the partial derivative with the others held fixed, which is what the next
    step reads. So dL/dc_{T-1} of an LSTM is zero: the loss reads h_{T-1}, already computed.

    Sequences are ``steps`` long (all full length); ``inputs`` replaces the random data.
    The programs run in the NumPy interpreter whatever the model's target, because the
    per-step cotangents are intermediate values of the backward program.
    """
    if not 1 <= steps <= MAX_STEPS or not 1 <= batch <= 100_000:
        raise error("E601", f"--steps must be between 1 and {MAX_STEPS} and --batch positive",
                    None)
    rng = np.random.default_rng(seed)
    data = dict(inputs) if inputs is not None else random_inputs(m, steps, batch, rng)
    bound = m._bind(data, {}, None, None)
    g = m.grad_programs()
    dtype = m.dtype
    values: dict[str, np.ndarray] = dict(m.params)
    values.update(bound.values)
    outs = run_program(g.forward, values, bound.dims, dtype)
    n = len(m.program.outputs)
    values.update({r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)})
    loss = 0.0
    weights: dict[str, np.ndarray] = {}
    for name, var, cot, out in zip(m.program.output_names, m.program.outputs, g.cotangents,
                                   outs[:n], strict=True):
        seed_arr = np.zeros_like(out)
        r = rng.normal(size=out.shape[-1]) / np.sqrt(out.shape[-1])
        weights[name] = r
        if len(var.shape) == 3:  # a sequence: only its last step enters the loss
            seed_arr[-1] = r
        else:
            seed_arr[...] = r
        loss += float((seed_arr.astype(np.float64) * out).sum())
        values[cot.name] = seed_arr.astype(dtype)
    env = {k: np.asarray(v, dtype=dtype) for k, v in values.items()}
    run_eqns(g.backward.eqns, env, bound.dims, np.dtype(dtype))
    cells = _cells_by_span(m)
    result = GradFlow(m.name, steps, batch, loss, weights)
    for f, r in _pair_scans(m.program.eqns, g.backward.eqns):
        fs: ScanSpec = f.attr("scan")
        for j in _state_arrays(fs):
            acc = env[r.outputs[j].name]
            norms = np.linalg.norm(acc.astype(np.float64), axis=-1).mean(axis=1)[::-1].copy()
            layer = _layer_of(f.outputs[j].name, fs.arrays[j].name)
            result.flows.append(StateFlow(layer, fs.arrays[j].name, cells.get(layer, ""),
                                          acc.copy(), norms))
    return result


def _cells_by_span(m: Model) -> dict[str, str]:
    """Layer name -> cell name, from the scans' comments ("lstm over a sequence")."""
    out: dict[str, str] = {}
    for e in m.program.eqns:
        if e.op != "scan":
            continue
        spec: ScanSpec = e.attr("scan")
        cell = e.comment.removesuffix(" over a sequence")
        for j, a in enumerate(spec.arrays):
            out.setdefault(_layer_of(e.outputs[j].name, a.name), cell)
    return out


# --- output -----------------------------------------------------------------------------------
def _rows(steps: int) -> list[int]:
    if steps <= 30:
        return list(range(steps))
    picks = {0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300,
             400, 500, 600, 800, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, steps - 1}
    return sorted(k for k in picks if k < steps)


def decay_rate(norms: np.ndarray, k_max: int = 20) -> float | None:
    """Geometric mean of ||dL/ds_{T-k-1}|| / ||dL/ds_{T-k}|| for k from 1 to k_max."""
    k2 = min(len(norms) - 1, k_max)
    if k2 <= 1 or norms[1] <= 0 or norms[k2] <= 0:
        return None
    return float((norms[k2] / norms[1]) ** (1.0 / (k2 - 1)))


def steps_to_fall(norms: np.ndarray, factor: float = 0.01) -> int | None:
    """The first k after the largest of k = 0..2 where the norm is below factor * that."""
    head = norms[:3]
    if not len(head) or head.max() <= 0:
        return None
    start = int(head.argmax())
    ref = head.max() * factor
    for k in range(start, len(norms)):
        if norms[k] < ref:
            return k
    return None


def _title(s: StateFlow) -> str:
    return f"{s.name} ({s.cell})" if s.cell else s.name


def table_text(gf: GradFlow) -> str:
    """The norms as an aligned table, with a summary per state."""
    names = [_title(s) for s in gf.flows]
    widths = [max(11, len(n)) for n in names]
    lines = [f"||dL/ds_(T-k)||, mean over {gf.batch} random sequences of T = {gf.steps} steps; "
             f"L = <r, y[T-1]> with r fixed (model {gf.model})",
             "     k  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))]
    longest = max((len(s.norms) for s in gf.flows), default=0)
    for k in _rows(longest):  # a layer over a strided convolution or repeat() has its own T
        cells = [(f"{s.norms[k]:.3e}" if k < len(s.norms) else "").rjust(w)
                 for s, w in zip(gf.flows, widths, strict=True)]
        lines.append(f"{k:6d}  " + "  ".join(cells))
    lines.append("")
    for s in gf.flows:
        rate = decay_rate(s.norms)
        fall = steps_to_fall(s.norms)
        k2 = min(len(s.norms) - 1, 20)
        rate_s = f"x{rate:.3f} per step over k = 1..{k2}" if rate is not None else "n/a"
        fall_s = (f"below 1% of its start at k = {fall}" if fall is not None
                  else f"stays above 1% of its start for all {len(s.norms)} steps")
        lines.append(f"{_title(s)}: {rate_s}; {fall_s}")
    return "\n".join(lines) + "\n"


def csv_text(gf: GradFlow) -> str:
    lines = ["k," + ",".join(s.name for s in gf.flows)]
    for k in range(max((len(s.norms) for s in gf.flows), default=0)):
        lines.append(f"{k}," + ",".join(f"{s.norms[k]:.9e}" if k < len(s.norms) else ""
                                        for s in gf.flows))
    return "\n".join(lines) + "\n"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(gf: GradFlow, fmt: str = "png", title: str | None = None) -> bytes:
    """The picture: one line per state, log scale. Needs matplotlib (no pyplot state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
              "#17becf"]
    styles = ["-", "--", ":", "-."]
    layers: list[str] = []
    per_layer: dict[str, int] = {}
    longest = max((len(s.norms) for s in gf.flows), default=1)
    for s in gf.flows:
        ks = np.arange(len(s.norms))
        if s.layer not in layers:
            layers.append(s.layer)
        li = layers.index(s.layer)
        si = per_layer.get(s.layer, 0)
        per_layer[s.layer] = si + 1
        y = np.where(s.norms > 0, s.norms, np.nan)
        ax.semilogy(ks, y, styles[si % len(styles)], color=colors[li % len(colors)],
                    linewidth=1.8, marker="o" if longest <= 40 else None, markersize=2.5,
                    label=_title(s))
    ax.set_xlabel("k: steps back from the last step")
    ax.set_ylabel(r"$\|\partial L / \partial s_{T-k}\|$ (mean over the batch)")
    ax.set_title(title or f"Gradient flow through time: model {gf.model}, T = {gf.steps}",
                 fontsize=11)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_xlim(0, max(longest - 1, 1))
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()
