"""Where a CUDA call's time goes: device time per generated kernel against wall time per call.

For a GPU session after ``bench_gpu.py``: runs each (cell, T x B x H) through the generated
drivers (as bench_gpu's ``rnnlang`` rows do) under ``torch.profiler``, whose CUPTI tracing sees
Numba's kernels too, and prints per kernel its device time per call, then the wall time per
call, so scan kernels, whole-sequence kernels and host overhead (launches, allocation) separate.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import RnnlangRun  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="elman,lstm")
    ap.add_argument("--cases", default="50x1x64,100x32x128,1000x8x128")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--host", action="store_true",
                    help="also profile the host side (cProfile) of each mode's timed calls")
    args = ap.parse_args(argv)
    import torch
    from numba import cuda
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(0)
    for case in args.cases.split(","):
        T, B, H = (int(v) for v in case.split("x"))
        for cell in args.cells.split(","):
            r = RnnlangRun(cell, T, B, H, rng, args.cache_dir)
            for mode in ("fwd", "fwdbwd"):
                fn = getattr(r, mode)
                fn()
                fn()
                cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    fn()
                cuda.synchronize()
                wall = (time.perf_counter() - t0) * 1e3 / args.reps
                if args.host:
                    host = cProfile.Profile()
                    host.enable()
                    for _ in range(args.reps):
                        fn()
                    cuda.synchronize()
                    host.disable()
                    print(f"-- host profile, {T}x{B}x{H} {cell} {mode}, {args.reps} calls")
                    st = pstats.Stats(host)
                    st.sort_stats("tottime").print_stats(20)
                    st.sort_stats("cumulative").print_stats(30)
                acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                with profile(activities=acts) as prof:
                    for _ in range(args.reps):
                        fn()
                    cuda.synchronize()
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                rows = sorted(((e.key, e.device_time_total / 1e3 / args.reps, e.count // args.reps)
                               for e in prof.key_averages() if e.device_time_total > 0),
                              key=lambda k: -k[1])
                dev = sum(ms for _, ms, _ in rows)
                print(f"== {T}x{B}x{H} {cell} {mode}: wall {wall:.3f} ms/call, "
                      f"kernels {dev:.3f} ms/call ({len(rows)} kinds)", flush=True)
                for name, ms, n in rows[:12]:
                    print(f"   {ms:9.3f} ms  x{n:<3d} {name[:90]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
