"""Memory of one rnnlang training step (forward + BPTT) against the theoretical minimum.

The minimum is what the backward pass must keep from the forward pass when it recomputes no
matmul (pointwise values such as tanh(c) or f*h may be recomputed), in floats per time step and
batch row, with H the hidden size:

| cell  | kept per step                                                   | floats |
|-------|-----------------------------------------------------------------|--------|
| lstm  | gates i, f, g, o (4H), cell c (H), output h (H)                 | 6H     |
| gru   | gates r, z, n (3H), h (H), hn = h U_n + b_hn (H: dr needs it)   | 5H     |
| elman | h (H): tanh' = 1 - h^2, and h_(t-1) is the previous h           | 1H     |
| mgu   | f (H), candidate hc (H), h (H); f*h_(t-1) is recomputed         | 3H     |
| cifg  | gates f, g, o (3H), cell c (H), output h (H)                    | 5H     |

so the minimum is T * B * floats * 4 bytes (float32) per layer. Two measurements, each in a
fresh process (``python bench_memory.py --child CELL T B H CACHE SOURCE``) on the step after a
first, unmeasured one (JIT and one-time buffers such as OpenBLAS's work area and thread stacks):

* **residuals**: the exact bytes of the arrays the forward_train program returns for the
  backward program (rnnlang's BPTT storage; arrays that share memory are counted once);
* **peak RSS growth** of one ``m.vjp`` call: the peak resident set size, reset just before the
  call through ``/proc/self/clear_refs`` and read as ``VmHWM`` from ``/proc/self/status``, minus
  the resident size before it, plus the work arrays the previous step left for this one
  (``Model.workspace_bytes()``: resident already, but every step's). It includes what every
  training step must also hold besides the BPTT storage: the outputs and cotangent-sized
  temporaries, the input projection (T x B x gates*H), the gradients (of x: T x B x F, and of
  the weights).

Target (issue 5): residuals within 1.5x of the minimum.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

FLOATS_PER_H = {"lstm": 6, "gru": 5, "elman": 1, "mgu": 3, "cifg": 5}
TARGET_RATIO = 1.5


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(cell: str, T: int, B: int, H: int, cache_dir: str, source: str) -> dict[str, Any]:
    """Runs in the fresh process: residual bytes and the peak RSS growth of one vjp."""
    import resource

    import numpy as np

    import rnnlang
    from rnnlang.runtime import bind_inputs

    m = rnnlang.compile(source, cache_dir=cache_dir, H=H, F=H)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    cot = rng.standard_normal((T, B, H)).astype(np.float32)
    # a first step outside the measurement: the JIT (or cache load), and one-time buffers such
    # as OpenBLAS's work area and thread stacks, which stay resident (they are not per step)
    m.vjp({"x": x}, {"y": cot})
    gc.collect()
    # the work arrays the first step left for the next (rnnlang.codegen.workspace) are part of
    # every step's memory, though resident before the measured one: counted in its growth
    held = m.workspace_bytes()
    reset = _reset_peak()
    rss0 = _status_kb("VmRSS") or 0
    # VmHWM, not getrusage's ru_maxrss: a child forked from a big parent (bench_cpu.py with
    # torch and JAX loaded) inherits the parent's ru_maxrss across exec, and clear_refs does
    # not lower it (measured: 1.6 GB "growth" for a 0.1 MB step)
    before = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = m.vjp({"x": x}, {"y": cot})
    peak = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = sum(a.nbytes for a in (*g.params.values(), *g.inputs.values(), *g.outputs.values()))
    del g
    # the BPTT storage: the residual outputs forward_train hands to backward (as in
    # CpuExecutor.forward_backward), one array each, sized from their IR types
    b = bind_inputs(m.program, m.static, {"x": x}, None, None, m.dtype)
    g = m.grad_programs()
    res = {v.name: tuple(d.evaluate(b.dims) for d in v.shape) for v in g.residuals}
    itemsize = np.dtype(m.dtype).itemsize
    outputs = {v.name for v in m.program.outputs}
    return {"residual_bytes": int(sum(np.prod(s) * itemsize for s in res.values())),
            "residual_arrays": len(res), "residual_shapes": res,
            "aliases_output": sorted(set(res) & outputs),
            "rss_before_kb": rss0, "maxrss_before_kb": before, "maxrss_after_kb": peak,
            "peak_reset": reset, "workspace_bytes": held,
            "rss_growth_bytes": max(0, peak - rss0) * 1024 + held,
            "step_results_bytes": kept}


def _spawn(cell: str, T: int, B: int, H: int, cache_dir: str, timeout: float) -> dict[str, Any]:
    from bench_cpu import model_source
    here = Path(__file__).resolve().parent
    # a fixed mmap threshold: glibc otherwise raises it after the first step frees its big
    # arrays, keeps them in its heap, and the measured step reuses them unseen
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(here / "bench_memory.py"), "--child", cell,
                           str(T), str(B), str(H), cache_dir, model_source(cell)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def minimum_bytes(cell: str, T: int, B: int, H: int) -> int:
    return T * B * FLOATS_PER_H[cell] * H * 4


def measure(cases: list[tuple[str, tuple[int, int, int]]], cells: list[str], cache_dir: str,
            out: TextIO | None = None, timeout: float = 600.0) -> dict[str, Any]:
    rows = []
    for case, (T, B, H) in cases:
        for cell in cells:
            r = _spawn(cell, T, B, H, cache_dir, timeout)
            mn = minimum_bytes(cell, T, B, H)
            rows.append({"case": case, "T": T, "B": B, "H": H, "cell": cell, "min_bytes": mn,
                         "residual_ratio": r["residual_bytes"] / mn,
                         "rss_ratio": r["rss_growth_bytes"] / mn, **r})
            if out is not None:
                print(f"   memory {case} {cell}: residuals {r['residual_bytes'] / 1e6:.3g} MB "
                      f"({r['residual_bytes'] / mn:.2f}x min), peak RSS growth "
                      f"{r['rss_growth_bytes'] / 1e6:.3g} MB", file=out, flush=True)
    rep = {"floats_per_h": FLOATS_PER_H, "target_ratio": TARGET_RATIO, "rows": rows}
    if out is not None:
        print(text(rep), file=out, flush=True)
    return rep


def text(rep: dict[str, Any]) -> str:
    lines = ["\n## memory of a training step (float32): minimum = T*B*k*H*4 bytes (k per cell: "
             + ", ".join(f"{c} {k}" for c, k in rep["floats_per_h"].items())
             + "); residuals = forward_train's arrays for backward; RSS = peak growth of one vjp",
             "| case | cell | minimum MB | residuals MB | residuals / min | residual arrays | "
             "peak RSS growth MB | RSS / min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['case']} | {r['cell']} | {r['min_bytes'] / 1e6:.3g} | "
                     f"{r['residual_bytes'] / 1e6:.3g} | {r['residual_ratio']:.2f} | "
                     f"{r['residual_arrays']} | {r['rss_growth_bytes'] / 1e6:.3g} | "
                     f"{r['rss_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        cell, T, B, H, cache = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5]
        print(json.dumps(child(cell, T, B, H, cache, argv[6])))
        return 0
    import argparse
    import tempfile
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cpu import CASES, CELLS, _csv, parse_case
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES),
                    type=lambda s: [parse_case(t.strip()) for t in s.split(",") if t.strip()],
                    help=f"comma list of {', '.join(CASES)} or TxBxH (default all)")
    ap.add_argument("--cells", type=_csv(CELLS), default=list(CELLS),
                    help=f"comma list of {', '.join(CELLS)} (default all)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnmem-") as d:
        measure(args.cases, args.cells, d, out=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
