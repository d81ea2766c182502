"""JAX baseline of bench_cpu.py: each cell as ``lax.scan`` under ``jax.jit`` (optional).

Written the way a careful JAX user would: the input projection ``x @ W + b`` is one matmul
before the scan, the scan carries the states and reads one row of the projection per step,
weights stay ``[in, out]`` (no transposes or slicing of weights inside the step). Forward+
backward is ``jax.vjp`` of the whole sequence function, jitted as one program.

JAX is never a dependency of rnnlang: ``available()`` says whether it imports. Threads: XLA's
CPU client has no flag for its intra-op thread count; its Eigen pool has one thread per core
the process may use (2 on the benchmark machine). ``xla_flags(1)`` turns the pool off
(``--xla_cpu_multi_thread_eigen=false``) for ``--threads 1``; it must be in ``XLA_FLAGS``
before jax is imported.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


def available() -> bool:
    return importlib.util.find_spec("jax") is not None


def xla_flags(threads: int) -> str | None:
    """The XLA_FLAGS value for ``threads`` (None: leave XLA's default, one thread per core)."""
    return "--xla_cpu_multi_thread_eigen=false" if threads == 1 else None


def version() -> str | None:
    if not available():
        return None
    import jax
    return str(jax.__version__)


def _cells() -> dict[str, Callable[..., Any]]:
    """Sequence functions ``(p, x, s0) -> ys`` by cell; p and s0 keyed like bench_cpu."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    sig = jax.nn.sigmoid

    def proj(x: Any, W: Any, b: Any) -> Any:
        T, B, F = x.shape
        return (x.reshape(T * B, F) @ W + b).reshape(T, B, W.shape[1])

    def lstm(p: Any, x: Any, s0: Any) -> Any:
        U = p["h.U"]

        def step(hc: Any, xw: Any) -> Any:
            h, c = hc
            i, f, g, o = jnp.split(xw + h @ U, 4, axis=1)
            c = sig(f) * c + sig(i) * jnp.tanh(g)
            h = sig(o) * jnp.tanh(c)
            return (h, c), h
        return lax.scan(step, (s0["h"], s0["c"]), proj(x, p["h.W"], p["h.b"]))[1]

    def gru(p: Any, x: Any, s0: Any) -> Any:
        U, bh = p["h.U"], p["h.bh"]

        def step(h: Any, xw: Any) -> Any:
            xr, xz, xn = jnp.split(xw, 3, axis=1)
            hr, hz, hn = jnp.split(h @ U + bh, 3, axis=1)
            r, z = sig(xr + hr), sig(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = n + z * (h - n)
            return h, h
        return lax.scan(step, s0["h"], proj(x, p["h.W"], p["h.bx"]))[1]

    def elman(p: Any, x: Any, s0: Any) -> Any:
        Ws = p["h.Ws"]

        def step(h: Any, xw: Any) -> Any:
            h = jnp.tanh(xw + h @ Ws)
            return h, h
        return lax.scan(step, s0["s"], proj(x, p["h.Wx"], p["h.b"]))[1]

    def mgu(p: Any, x: Any, s0: Any) -> Any:
        Uf, Uh = p["h.Uf"], p["h.Uh"]
        xs = (proj(x, p["h.Wf"], p["h.bf"]), proj(x, p["h.Wh"], p["h.bh"]))

        def step(h: Any, xw: Any) -> Any:
            xf, xh = xw
            f = sig(xf + h @ Uf)
            hc = jnp.tanh(xh + (f * h) @ Uh)
            h = h + f * (hc - h)
            return h, h
        return lax.scan(step, s0["h"], xs)[1]

    def cifg(p: Any, x: Any, s0: Any) -> Any:
        U = p["h.U"]

        def step(hc: Any, xw: Any) -> Any:
            h, c = hc
            zf, zg, zo = jnp.split(xw + h @ U, 3, axis=1)
            f = sig(zf)
            c = f * c + (1 - f) * jnp.tanh(zg)
            h = sig(zo) * jnp.tanh(c)
            return (h, c), h
        return lax.scan(step, (s0["h"], s0["c"]), proj(x, p["h.W"], p["h.b"]))[1]

    return {"lstm": lstm, "gru": gru, "elman": elman, "mgu": mgu, "cifg": cifg}


class JaxScan:
    """bench_cpu backend protocol: ``fwd``/``fwdbwd`` timed, ``check_*`` by rnnlang names.

    ``compile_s`` holds the first call of each mode (trace + XLA compile + one run)."""

    name = "jax-scan"

    def __init__(self, cell: str, params: Arrays, x: np.ndarray, states0: Arrays,
                 cot: np.ndarray):
        import jax
        import jax.numpy as jnp

        seq = _cells()[cell]
        self.p = {k: jnp.asarray(v) for k, v in params.items()}
        self.x = jnp.asarray(x)
        self.s0 = {k: jnp.asarray(v) for k, v in states0.items()}
        self.cot = jnp.asarray(cot)
        self._fwd = jax.jit(seq)

        def fwdbwd(p: Any, x: Any, s0: Any, cot: Any) -> Any:
            y, pull = jax.vjp(seq, p, x, s0)
            return y, pull(cot)
        self._fwdbwd = jax.jit(fwdbwd)
        self.compile_s: dict[str, float] = {}
        for mode in ("fwd", "fwdbwd"):
            t0 = time.perf_counter()
            getattr(self, mode)()
            self.compile_s[mode] = time.perf_counter() - t0

    def fwd(self) -> Any:
        return self._fwd(self.p, self.x, self.s0).block_until_ready()

    def fwdbwd(self) -> Any:
        import jax
        return jax.block_until_ready(self._fwdbwd(self.p, self.x, self.s0, self.cot))

    def check_fwd(self) -> Arrays:
        return {"y": np.asarray(self.fwd())}

    def check_fwdbwd(self) -> Arrays:
        y, (dp, dx, ds) = self.fwdbwd()
        out = {"y": np.asarray(y), "x": np.asarray(dx)}
        out.update({k: np.asarray(v) for k, v in dp.items()})
        out.update({f"h.{k}0": np.asarray(v) for k, v in ds.items()})
        return out


__all__ = ["JaxScan", "available", "version", "xla_flags"]
