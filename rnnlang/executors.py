"""Backends that run a model's programs: the NumPy reference interpreter and generated CPU code.

Both take bound values (parameters, inputs, masks, states) and return outputs; the training path
runs the forward program with residual outputs and then the backward program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlang.interp import run_program
from rnnlang.ir.nodes import Program
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
    """Generated, Numba-compiled code; each function compiles on first use."""

    def __init__(self, model: Model):
        from rnnlang.codegen.load import load_module
        from rnnlang.codegen.module import emit_cpu_module

        self.m = model
        g = model.grad_programs()
        self.programs = {"forward": model.program, "forward_train": g.forward,
                         "backward": g.backward}
        self.source, self.syms = emit_cpu_module(
            self.programs, dtype=model.options.dtype, source_name=model.source_name,
            source_text=model.source_text, passes=tuple(model.pass_log.applied))
        self.module = load_module(self.source, model.options.cache_dir)
        self._limit = _blas_limiter(model.options.blas_threads)

    def _call(self, fn: str, b: Bound, extra: dict[str, np.ndarray]) -> list[np.ndarray]:
        prog: Program = self.programs[fn]
        vals: dict[str, Any] = dict(self.m.params)
        vals.update(b.values)
        vals.update(extra)
        dims = np.array([b.dims[s] for s in self.syms[fn]], dtype=np.int64)
        args = [vals[v.name] for v in prog.param_vars + prog.input_vars]
        if self._limit is None:
            return list(getattr(self.module, fn)(*args, dims))
        with self._limit():
            return list(getattr(self.module, fn)(*args, dims))

    def forward(self, b: Bound) -> list[np.ndarray]:
        return self._call("forward", b, {})

    def forward_backward(self, b: Bound, seeds: Seeds) -> tuple[list[np.ndarray],
                                                                list[np.ndarray]]:
        g = self.m.grad_programs()
        outs = self._call("forward_train", b, {})
        n = len(self.m.program.outputs)
        extra = {r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)}
        extra.update({c.name: s for c, s in zip(g.cotangents, seeds(outs[:n]), strict=True)})
        return outs[:n], self._call("backward", b, extra)


def _blas_limiter(threads: int | None) -> Callable[[], Any] | None:
    """Limit the BLAS that Numba calls (SciPy's OpenBLAS) while generated code runs.

    The time loop makes one small GEMM per step; OpenBLAS worker threads waking for each of
    them cost far more than they save, and stall badly when another process holds a core
    (measured: a 2-layer LSTM step 40-90x slower with 2 threads on a busy 2-core machine).
    Only SciPy's BLAS is limited, and only during the call, so NumPy elsewhere is untouched."""
    if threads is None:
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    ctl = ThreadpoolController()
    blas = [info for info in ctl.info() if info.get("user_api") == "blas"]
    scipy_paths = [i["filepath"] for i in blas if "scipy" in i["filepath"]]
    libs = ctl.select(filepath=scipy_paths) if scipy_paths else ctl.select(user_api="blas")
    if not libs.lib_controllers:
        return None
    return lambda: libs.limit(limits=threads)


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
