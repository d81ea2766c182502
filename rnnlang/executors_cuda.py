"""The CUDA executor (target="cuda"): generated numba-cuda kernels, device-resident parameters.

Parameters are uploaded once and kept on the device; before each call the host arrays in
``model.params`` are compared with the snapshot taken at upload time (``np.array_equal``, a
host-side read of each parameter, far cheaper than a transfer) and only the ones that changed
are uploaded again, so training with the optimizer on the host works. Inputs may be NumPy
arrays (uploaded) or device arrays (numba, CuPy, PyTorch: anything with
``__cuda_array_interface__``), used in place when they already have the model's dtype and are
C-contiguous. During training the residuals stay on the device between the forward and the
backward program; only outputs and gradients come back to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlang.diagnostics import error
from rnnlang.ir.nodes import Program
from rnnlang.ir.types import BATCH
from rnnlang.runtime import Bound

if TYPE_CHECKING:
    from rnnlang.api import Model

Seeds = Callable[[list[np.ndarray]], list[np.ndarray]]


def _import_cuda() -> Any:
    from numba import cuda
    return cuda


def require_cuda(importer: Callable[[], Any] = _import_cuda) -> Any:
    """``numba.cuda`` when a GPU (or Numba's CUDA simulator) is usable, else a user error."""
    try:
        cuda = importer()
    except ImportError:
        raise error("E700", "target 'cuda' needs numba-cuda", None,
                    hint="pip install -e '.[cuda]'") from None
    try:
        ok = bool(cuda.is_available())
    except Exception:  # a broken driver install reports itself as unavailable
        ok = False
    if not ok:
        raise error("E700", "target 'cuda' needs an NVIDIA GPU, and none is available", None,
                    hint="use target='cpu' (or NUMBA_ENABLE_CUDASIM=1 to run the CUDA "
                    "kernels in Numba's simulator)")
    return cuda


def cuda_source(model: Model) -> str:
    """The generated CUDA module of a model (no GPU needed: it is only text)."""
    from rnnlang.codegen.cuda import emit_cuda_module
    g = model.grad_programs()
    programs = {"forward": model.program, "forward_train": g.forward, "backward": g.backward}
    return emit_cuda_module(programs, dtype=model.options.dtype, source_name=model.source_name,
                            source_text=model.source_text,
                            passes=tuple(model.pass_log.applied))[0]


def device_bytes(prog: Program, dims: Mapping[str, int], itemsize: int) -> int:
    """An upper bound of the device memory one call of a driver allocates: every value outside
    the scans, plus every per-step value inside them (per-row ones once, the others once per
    block, at most one block per batch row). Nothing is freed during a call."""
    def size(shape: tuple[Any, ...]) -> int:
        return int(np.prod([d.evaluate(dims) for d in shape], dtype=np.int64))

    total = sum(size(v.shape) for v in prog.input_vars + prog.param_vars)
    for e in prog.eqns:
        total += sum(size(v.shape) for v in e.outputs)
        spec = e.attr("scan")
        if spec is not None:
            for x in spec.body.eqns:
                for v in x.outputs:
                    rows = 1 if v.shape[:1] == (BATCH,) else dims.get("B", 1)
                    total += size(v.shape) * rows
    return total * itemsize


def is_device_array(x: Any) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    try:
        from numba import cuda
        return bool(cuda.devicearray.is_cuda_ndarray(x))
    except Exception:  # pragma: no cover - numba without cuda
        return False


def split_device_inputs(given: Mapping[str, Any], dtype: np.dtype) -> tuple[dict[str, Any],
                                                                             dict[str, Any]]:
    """Replace device arrays by host placeholders of the same shape (for size binding and
    checks) and return the device arrays, in the model's dtype, to use instead.

    The placeholder is ``np.empty``: no data is copied or touched."""
    host: dict[str, Any] = {}
    device: dict[str, Any] = {}
    for name, x in given.items():
        if not is_device_array(x):
            host[name] = x
            continue
        d = _as_device(x)
        if np.dtype(d.dtype) != dtype or not _c_contiguous(d):
            raise error("E601", f"device input '{name}' must be a C-contiguous {dtype} array, "
                        f"got {np.dtype(d.dtype)}", None,
                        hint="convert it on the device first, or pass a NumPy array")
        host[name] = np.empty(tuple(d.shape), dtype)
        device[name] = d
    return host, device


def _as_device(x: Any) -> Any:
    from numba import cuda
    if cuda.devicearray.is_cuda_ndarray(x):
        return x
    return cuda.as_cuda_array(x)  # zero-copy view of a CuPy / PyTorch / ... array


def c_order(x: Any, dtype: Any) -> np.ndarray:
    """``x`` as a C-ordered array whose strides are the canonical ones.

    NumPy calls (T, B, 1) masks made with ``[:, :, None]`` C-contiguous with a stride of 0 on
    the size-1 axis; numba-cuda's own layout check does not, and its host-to-device copy then
    walked the array element by element in Python (measured on an H100: 13 of 14 ms of a
    100-step forward call)."""
    a = np.ascontiguousarray(x, dtype=dtype)
    return a.reshape(-1).reshape(a.shape)  # a view with the canonical strides


def _c_contiguous(d: Any) -> bool:
    try:
        return bool(d.is_c_contiguous())
    except AttributeError:  # the simulator's arrays
        return bool(np.asarray(d).flags.c_contiguous)


class CudaExecutor:
    """Runs a model's generated CUDA drivers; see the module docstring for data movement."""

    def __init__(self, model: Model):
        self.cuda = require_cuda()
        from rnnlang.codegen.cuda import emit_cuda_module
        from rnnlang.codegen.cuda_kernels import Launch
        from rnnlang.codegen.load import load_module

        self.m = model
        g = model.grad_programs()
        self.programs = {"forward": model.program, "forward_train": g.forward,
                         "backward": g.backward}
        self.source, self.syms = emit_cuda_module(
            self.programs, dtype=model.options.dtype, source_name=model.source_name,
            source_text=model.source_text, passes=tuple(model.pass_log.applied))
        self.module = load_module(self.source, model.options.cache_dir)
        self.launch = Launch.for_device()
        self._params: dict[str, tuple[np.ndarray, Any]] = {}
        self.uploads = 0  # parameter uploads so far (tests check unchanged ones are not resent)

    # data movement ------------------------------------------------------------------------
    def device_params(self) -> dict[str, Any]:
        """Device copies of the parameters, re-uploading only those whose host array changed."""
        out = {}
        for name, arr in self.m.params.items():
            held = self._params.get(name)
            if held is None or held[0].shape != arr.shape or not np.array_equal(
                    held[0], arr, equal_nan=True):
                held = (arr.copy(), self.cuda.to_device(c_order(arr, arr.dtype)))
                self._params[name] = held
                self.uploads += 1
            out[name] = held[1]
        return out

    def _upload(self, x: Any) -> Any:
        if is_device_array(x):
            return _as_device(x)
        return self.cuda.to_device(c_order(x, self.m.dtype))

    def run_device(self, fn: str, b: Bound, extra: Mapping[str, Any]) -> list[Any]:
        """Run one driver (``forward``, ``forward_train`` or ``backward``) and return its
        outputs as device arrays: nothing is copied back (benchmarks, device pipelines)."""
        return self._call(fn, b, extra)

    def check_memory(self, fn: str, dims: Mapping[str, int]) -> None:
        """A clear error before anything is allocated when the call cannot fit on the GPU."""
        need = device_bytes(self.programs[fn], dims, self.m.dtype.itemsize)
        free = float(self.cuda.current_context().get_memory_info().free)
        if need > free:
            raise error("E601", f"this call needs up to {need / 2**20:.0f} MiB of GPU memory, "
                        f"and {free / 2**20:.0f} MiB are free", None,
                        hint="split the batch or the sequences (the size limits of the CPU "
                        "target apply too)")

    def _call(self, fn: str, b: Bound, extra: Mapping[str, Any]) -> list[Any]:
        prog: Program = self.programs[fn]
        self.check_memory(fn, b.dims)
        vals: dict[str, Any] = dict(self.device_params())
        vals.update(b.values)
        vals.update(extra)
        args = [self._upload(vals[v.name]) for v in prog.param_vars + prog.input_vars]
        dims = [b.dims[s] for s in self.syms[fn]]
        return list(getattr(self.module, fn)(*args, dims, self.launch))

    # the executor interface -------------------------------------------------------------------
    def forward(self, b: Bound) -> list[np.ndarray]:
        return [o.copy_to_host() for o in self._call("forward", b, {})]

    def forward_backward(self, b: Bound, seeds: Seeds) -> tuple[list[np.ndarray],
                                                                list[np.ndarray]]:
        g = self.m.grad_programs()
        outs = self._call("forward_train", b, {})
        n = len(self.m.program.outputs)
        host = [o.copy_to_host() for o in outs[:n]]
        extra: dict[str, Any] = {r.name: o for r, o in zip(g.residuals, outs[n:], strict=True)}
        extra.update({c.name: s for c, s in zip(g.cotangents, seeds(host), strict=True)})
        grads = self._call("backward", b, extra)
        return host, [x.copy_to_host() for x in grads]
