"""rnnlang's compile time: cold (empty caches, fresh process) and cached start (a second process
on the same caches) of a 2-layer LSTM, forward and forward+backward.

Each measurement is a fresh Python process (``python bench_startup.py --child DIR``) that times
``import rnnlang``, ``rnnlang.compile`` (parse, lowering, passes), the first ``forward`` (code
generation, module load, Numba JIT of the forward function) and the first ``vjp`` (BPTT program
derivation and the Numba JIT of forward_train and backward). "Cold" runs with an empty rnnlang
cache directory *and* an empty ``NUMBA_CACHE_DIR`` (so no Numba cache of rnnlang's own kernels
helps either); "cached" is the next process on the same two directories. Targets (issue 5):
cold < 10 s, cached < 1 s, for everything after the interpreter starts: import rnnlang +
compile + first forward + first vjp (rnnlang imports NumPy, Numba, Lark and SciPy lazily, so
their import time falls into these phases; the process's wall time is reported beside).

    python benchmarks/bench_startup.py            # 2 cold + 2 cached runs, a table
    python benchmarks/bench_startup.py --bytecode     # children write .pyc files (Python's
    python benchmarks/bench_startup.py --no-bytecode  # default) / do not; else as here

Whether the children could write bytecode is in the table: with PYTHONDONTWRITEBYTECODE set and
an editable install, rnnlang's modules are compiled from source in every process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

SOURCE = """model lstm2(F = 64, H = 128) {
  input x: seq[F]
  h = stack(lstm(H), 2) over x
  output y = h
}
"""
SIZES = {"T": 20, "B": 8}
TARGET_COLD_S = 10.0
TARGET_CACHED_S = 1.0
PHASES = ("import_s", "compile_s", "first_fwd_s", "first_vjp_s")


def child(cache_dir: str) -> dict[str, float]:
    """Runs inside the fresh process: the phases in seconds."""
    t0 = time.perf_counter()
    import numpy as np

    import rnnlang
    t1 = time.perf_counter()
    m = rnnlang.compile(SOURCE, cache_dir=cache_dir)
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((SIZES["T"], SIZES["B"], 64)).astype(np.float32)
    y = m.forward({"x": x})["y"]
    t3 = time.perf_counter()
    m.vjp({"x": x}, {"y": np.ones_like(y)})
    t4 = time.perf_counter()
    return {"import_s": t1 - t0, "compile_s": t2 - t1, "first_fwd_s": t3 - t2,
            "first_vjp_s": t4 - t3, "bytecode": not sys.dont_write_bytecode}


def _spawn(cache_dir: str, numba_dir: str, timeout: float,
           bytecode: bool | None = None) -> dict[str, Any]:
    """One child process; ``bytecode`` False/True sets/clears PYTHONDONTWRITEBYTECODE for it
    (None: as here). Without written bytecode every module of rnnlang is compiled from source
    in every process (~0.4 s of a cached start here); pip installs and Python's default
    settings write it."""
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_dir)
    if bytecode is True:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    elif bytecode is False:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", cache_dir],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"compile-time child failed ({proc.returncode}):\n{proc.stderr}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    res["startup_s"] = sum(res[k] for k in PHASES)
    return res


def measure(rounds: int = 2, out: TextIO | None = None, timeout: float = 300.0,
            bytecode: bool | None = None) -> dict[str, Any]:
    """``rounds`` cold runs (each on new empty caches), each followed by one cached run."""
    runs: list[dict[str, Any]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="rnnstart-") as d:
            rn, nb = os.path.join(d, "rnnlang"), os.path.join(d, "numba")
            os.makedirs(rn)
            os.makedirs(nb)
            runs.append({"kind": "cold", **_spawn(rn, nb, timeout, bytecode)})
            runs.append({"kind": "cached", **_spawn(rn, nb, timeout, bytecode)})
    best = {k: min(r["startup_s"] for r in runs if r["kind"] == k) for k in ("cold", "cached")}
    rep = {"model": SOURCE, "sizes": SIZES, "runs": runs, "best_s": best,
           "targets_s": {"cold": TARGET_COLD_S, "cached": TARGET_CACHED_S}}
    if out is not None:
        print(text(rep), file=out, flush=True)
    return rep


def text(rep: dict[str, Any]) -> str:
    lines = ["\n## rnnlang compile time, 2-layer LSTM (F=64, H=128), fresh processes (s): "
             "import rnnlang, compile(), first forward, first vjp; their sum (the targets' figure); "
             "the whole process",
             "| run | import | compile | first fwd | first vjp | sum | process | bytecode written |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['kind']} | {r['import_s']:.2f} | {r['compile_s']:.2f} | "
                     f"{r['first_fwd_s']:.2f} | {r['first_vjp_s']:.2f} | {r['startup_s']:.2f} | "
                     f"{r['process_s']:.2f} | {'yes' if r.get('bytecode') else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1])))
        return 0
    flag = {"--bytecode": True, "--no-bytecode": False}
    measure(out=sys.stdout, bytecode=flag.get(argv[0]) if argv else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
