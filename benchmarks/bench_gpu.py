"""GPU benchmark: rnnlang's CUDA target against PyTorch cuDNN and TorchScript loops, same run.

One prepared script for a machine with an NVIDIA GPU, numba-cuda and PyTorch (CUDA build):

1. **Parity first**, on fresh random data: for every cell, the float32 CUDA forward outputs and
   every gradient (parameters, input, initial state) against rnnlang's float64 CPU target;
   the largest relative error (max |a - b| / max |b|, per array) must be under 1e-4. The script
   stops (exit 1) before timing anything if a cell fails.
2. **Timings**, float32, TF32 off, at (T, B, H) = (50, 1, 64), (100, 32, 128), (100, 64, 512),
   (1000, 8, 128), (100, 256, 1024) with input size = H, for ``elman`` (tanh), ``lstm``,
   ``gru`` and the custom cell ``mgu``:
   * ``rnnlang``: the generated drivers on device arrays (inputs, cotangent and parameters
     already on the device; outputs and gradients left there), ``fwd`` and ``fwdbwd``
     (forward with residuals, then BPTT); ``rnnlang-api`` is the same through
     ``Model.forward`` / ``Model.vjp`` (host copies of outputs and gradients included);
   * ``cudnn``: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (no native MGU);
   * ``torch-script``: the same cell as a ``torch.jit.script`` loop (input projection
     hoisted), the baseline a custom cell is measured against.
   Each figure is the median of repeats after warm-up (which includes Numba's compile), timed
   with ``cuda.synchronize()`` / ``torch.cuda.synchronize()`` around host timers.
3. A short table is printed last; everything (device, versions, date, parity errors, every
   sample) goes to the JSON file given by ``--out``.

``--smoke`` runs tiny shapes and, without a GPU, works under ``NUMBA_ENABLE_CUDASIM=1`` with
PyTorch on the CPU (to check the script itself; its times mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # TorchScript reads the loops' annotations from this module's globals
    from torch import Tensor
except ImportError:  # pragma: no cover - no PyTorch: no baselines
    Tensor = Any  # type: ignore[misc,assignment]

CASES = ((50, 1, 64), (100, 32, 128), (100, 64, 512), (1000, 8, 128), (100, 256, 1024))
SMOKE_CASES = ((3, 2, 4),)
CELLS = ("elman", "lstm", "gru", "mgu")
NATIVE = {"elman": "RNN", "lstm": "LSTM", "gru": "GRU"}
SCRIPTED = ("lstm", "mgu")  # cells also timed as a TorchScript loop
SPEC = "model m(H, F) {{\n  input x: seq[F]\n  h = {cell}(H) over x\n  output y = h\n}}\n"
PARITY_SHAPE = (20, 4, 32)
PARITY_TOL = 1e-4


# ---- rnnlang ---------------------------------------------------------------------------------
def compile_cell(cell: str, dtype: str, target: str, H: int, cache: Path | None) -> Any:
    import rnnlang
    return rnnlang.compile(SPEC.format(cell=cell), target=target, dtype=dtype, H=H, F=H,
                           cache_dir=cache)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def parity(cell: str, oracle: str, shape: tuple[int, int, int], seed: int,
           cache: Path | None) -> dict[str, float]:
    """Largest relative error of each output and gradient, CUDA float32 against float64."""
    T, B, H = shape
    rng = np.random.default_rng(seed)
    ref = compile_cell(cell, "float64", oracle, H, cache)
    cu = compile_cell(cell, "float32", "cuda", H, cache)
    x = rng.standard_normal((T, B, H))
    lengths = rng.integers(max(1, T // 2), T + 1, size=B)
    lengths[0] = T
    ref.forward({"x": x}, lengths=lengths)
    ref.params = {k: 0.5 * rng.standard_normal(v.shape) for k, v in ref.params.items()}
    cu.params = {k: v.astype(np.float32) for k, v in ref.params.items()}
    initial = {s: 0.5 * rng.standard_normal((B, H)) for s in ref.state_names}
    cot = {"y": rng.standard_normal((T, B, H))}
    gr = ref.vjp({"x": x}, cot, lengths=lengths, initial=initial)
    gc = cu.vjp({"x": x.astype(np.float32)}, cot, lengths=lengths, initial=initial)
    errs = {"y": rel_err(cu.forward({"x": x}, lengths=lengths, initial=initial)["y"],
                         gr.outputs["y"])}
    errs.update({f"d {k}": rel_err(gc.params[k], v) for k, v in gr.params.items()})
    errs.update({f"d {k}": rel_err(gc.inputs[k], v) for k, v in gr.inputs.items()})
    return errs


class RnnlangRun:
    """A compiled cell bound to device data, timed at the level of the generated drivers."""

    def __init__(self, cell: str, T: int, B: int, H: int, rng: np.random.Generator,
                 cache: Path | None):
        from numba import cuda
        self.cuda = cuda
        self.m = compile_cell(cell, "float32", "cuda", H, cache)
        self.x = rng.standard_normal((T, B, H)).astype(np.float32)
        self.cot = rng.standard_normal((T, B, H)).astype(np.float32)
        self.m.forward({"x": self.x})  # sizes and parameters
        self.m.params = {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32)
                         for k, v in self.m.params.items()}
        self.dx = cuda.to_device(self.x)
        self.b = self.m._bind({"x": self.dx}, {}, None, None)
        self.ex = self.m._executor()
        self.g = self.m.grad_programs()
        self.extra_cot = {self.g.cotangents[0].name: cuda.to_device(self.cot)}

    def fwd(self) -> None:
        self.ex.run_device("forward", self.b, {})

    def fwdbwd(self) -> None:
        outs = self.ex.run_device("forward_train", self.b, {})
        n = len(self.m.program.outputs)
        extra = {r.name: o for r, o in zip(self.g.residuals, outs[n:], strict=True)}
        extra.update(self.extra_cot)
        self.ex.run_device("backward", self.b, extra)

    def api_fwd(self) -> None:
        self.m.forward({"x": self.dx})

    def api_fwdbwd(self) -> None:
        self.m.vjp({"x": self.dx}, {"y": self.cot})


# ---- PyTorch baselines -------------------------------------------------------------------------
def torch_lstm_loop(xw: Tensor, h: Tensor, c: Tensor, U: Tensor) -> list[Tensor]:
    outs: list[Tensor] = []
    for t in range(xw.shape[0]):
        z = xw[t] + h @ U
        i, f, g, o = z.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        outs.append(h)
    return outs


def torch_mgu_loop(xf: Tensor, xh: Tensor, h: Tensor, Uf: Tensor, Uh: Tensor) -> list[Tensor]:
    outs: list[Tensor] = []
    for t in range(xf.shape[0]):
        f = (xf[t] + h @ Uf).sigmoid()
        hc = (xh[t] + (f * h) @ Uh).tanh()
        h = (1 - f) * h + f * hc
        outs.append(h)
    return outs


class TorchRun:
    def __init__(self, kind: str, cell: str, T: int, B: int, H: int, dev: str,
                 rng: np.random.Generator):
        import torch
        self.torch = torch
        self.x = torch.tensor(rng.standard_normal((T, B, H)), dtype=torch.float32, device=dev,
                              requires_grad=True)
        self.cot = torch.tensor(rng.standard_normal((T, B, H)), dtype=torch.float32, device=dev)
        if kind == "cudnn":
            self.net = getattr(torch.nn, NATIVE[cell])(H, H).to(dev)
            self.run: Callable[[], Any] = lambda: self.net(self.x)[0]
            return
        p = lambda *s: torch.tensor(0.3 * rng.standard_normal(s), dtype=torch.float32,  # noqa
                                    device=dev, requires_grad=True)
        h0 = torch.zeros(B, H, device=dev)
        with warnings.catch_warnings():  # "torch.jit.script is deprecated" (torch >= 2.10)
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = torch.jit.script(torch_lstm_loop if cell == "lstm" else torch_mgu_loop)
        if cell == "lstm":
            W, U, b = p(H, 4 * H), p(H, 4 * H), p(4 * H)
            self.run = lambda: torch.stack(loop(self.x @ W + b, h0, h0, U))
        else:
            Wf, Uf, bf, Wh, Uh, bh = p(H, H), p(H, H), p(H), p(H, H), p(H, H), p(H)
            self.run = lambda: torch.stack(loop(self.x @ Wf + bf, self.x @ Wh + bh, h0, Uf, Uh))

    def fwd(self) -> None:
        with self.torch.no_grad():
            self.run()

    def fwdbwd(self) -> None:
        y = self.run()
        y.backward(self.cot)


# ---- timing ------------------------------------------------------------------------------------
def timer(sync: Callable[[], None], fn: Callable[[], None], warmup: int, reps: int,
          budget_s: float) -> list[float]:
    """Milliseconds per call: ``warmup`` calls, then up to ``reps`` (at least 3) timed ones,
    stopping early once ``budget_s`` is spent."""
    for _ in range(warmup):
        fn()
    sync()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < reps and (len(out) < 3 or time.perf_counter() - start < budget_s):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file for every result")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--cases", default=None, help="e.g. 50x1x64,100x32x128 (T x B x H)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--oracle", default="cpu", choices=("cpu", "reference"),
                    help="float64 target the parity check compares against")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script only")
    ap.add_argument("--keep-going", action="store_true",
                    help="time even after a parity failure (the table then says so)")
    args = ap.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    cases = (tuple(tuple(int(v) for v in c.split("x")) for c in args.cases.split(","))
             if args.cases else (SMOKE_CASES if args.smoke else CASES))
    from numba import cuda

    import rnnlang
    from rnnlang.codegen.cuda_kernels import simulated
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        tdev = "cuda" if torch.cuda.is_available() else "cpu"
        tver = torch.__version__
    except ImportError:
        torch, tdev, tver = None, None, None
    dev_name = "CUDA simulator" if simulated() else cuda.get_current_device().name
    if isinstance(dev_name, bytes):
        dev_name = dev_name.decode()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": dev_name, "simulated": simulated(), "torch_device": tdev,
        "versions": {"rnnlang": rnnlang.__version__, "numpy": np.__version__,
                     "numba": __import__("numba").__version__, "torch": tver,
                     "cudnn": (torch.backends.cudnn.version() if torch is not None and
                               tdev == "cuda" else None),
                     "python": platform.python_version()},
        "parity": {}, "timings": []}

    def save() -> None:
        args.out.write_text(json.dumps(info, indent=1))

    # 1. parity on fresh random data
    pshape = SMOKE_CASES[0] if args.smoke else PARITY_SHAPE
    seed = int(time.time()) % 100000
    info["parity_seed"] = seed
    failed = []
    for cell in cells:
        errs = parity(cell, args.oracle, pshape, seed, args.cache_dir)
        worst = max(errs.values())
        info["parity"][cell] = {"shape": pshape, "worst": worst, "errors": errs}
        print(f"parity {cell:6s} worst rel. error {worst:.2e} over {len(errs)} arrays",
              flush=True)
        if not worst < PARITY_TOL:
            failed.append(cell)
    save()
    if failed:
        print(f"PARITY FAILED for {', '.join(failed)} (tolerance {PARITY_TOL})"
              + ("; timing anyway (--keep-going)" if args.keep_going else "; no timings"),
              file=sys.stderr)
        info["parity_failed"] = failed
        if not args.keep_going:
            return 1

    # 2. timings
    def sync() -> None:
        cuda.synchronize()
        if torch is not None and tdev == "cuda":
            torch.cuda.synchronize()

    rng = np.random.default_rng(seed)
    for T, B, H in cases:
        for cell in cells:
            runs: list[tuple[str, Any]] = [("rnnlang", None)]
            if torch is not None and cell in NATIVE:
                runs.append(("cudnn", None))
            if torch is not None and cell in SCRIPTED:
                runs.append(("torch-script", None))
            for backend, _ in runs:
                try:
                    if backend == "rnnlang":
                        r = RnnlangRun(cell, T, B, H, rng, args.cache_dir)
                        modes = {"fwd": r.fwd, "fwdbwd": r.fwdbwd, "api-fwd": r.api_fwd,
                                 "api-fwdbwd": r.api_fwdbwd}
                    else:
                        t = TorchRun(backend, cell, T, B, H, tdev or "cpu", rng)
                        modes = {"fwd": t.fwd, "fwdbwd": t.fwdbwd}
                    for mode, fn in modes.items():
                        ms = timer(sync, fn, args.warmup, args.reps, args.budget)
                        info["timings"].append({"T": T, "B": B, "H": H, "cell": cell,
                                                "backend": backend, "mode": mode,
                                                "median_ms": statistics.median(ms),
                                                "samples_ms": ms})
                        print(f"{T}x{B}x{H} {cell} {backend} {mode}: "
                              f"{statistics.median(ms):.3f} ms", flush=True)
                except Exception as exc:  # record and go on: one failure must not lose the rest
                    info["timings"].append({"T": T, "B": B, "H": H, "cell": cell,
                                            "backend": backend, "error": repr(exc)})
                    print(f"{T}x{B}x{H} {cell} {backend}: FAILED {exc!r}", flush=True)
                save()
    save()
    print(table(info))
    if failed:
        print(f"(parity FAILED for {', '.join(failed)}: these timings are of wrong results)")
    return 1 if failed else 0


def table(info: dict[str, Any]) -> str:
    """Markdown: median ms, fwd / fwd+bwd, and rnnlang's speed-up over each baseline."""
    med: dict[tuple[Any, ...], float] = {}
    for r in info["timings"]:
        if "median_ms" in r:
            med[(r["T"], r["B"], r["H"], r["cell"], r["backend"], r["mode"])] = r["median_ms"]
    rows = ["", f"{info['device']} ({info['date']}), float32, TF32 off; median ms fwd / fwd+bwd; "
            "x = baseline time / rnnlang time", "",
            "| T, B, H | cell | rnnlang | cuDNN | x cuDNN | TorchScript loop | x script |",
            "|---|---|---|---|---|---|---|"]
    keys = sorted({k[:4] for k in med})

    def pair(k: tuple[Any, ...], backend: str) -> str:
        a, b = med.get(k + (backend, "fwd")), med.get(k + (backend, "fwdbwd"))
        return f"{a:.3g} / {b:.3g}" if a is not None and b is not None else "n/a"

    for k in keys:
        ours = (med.get(k + ("rnnlang", "fwd")), med.get(k + ("rnnlang", "fwdbwd")))
        cells = [f"{k[0]}, {k[1]}, {k[2]}", k[3], pair(k, "rnnlang")]
        for backend in ("cudnn", "torch-script"):
            theirs = (med.get(k + (backend, "fwd")), med.get(k + (backend, "fwdbwd")))
            cells.append(pair(k, backend))
            if None in theirs or None in ours:
                cells.append("n/a")
            else:
                cells.append(f"{theirs[0] / ours[0]:.2f} / {theirs[1] / ours[1]:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
