"""The public Python API: `compile` a `.rnn` spec into a `Model`.

A `Model` owns its parameters (named NumPy arrays), runs the forward pass, and gives gradients
of output cotangents or of a scalar loss with respect to every parameter and input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnlang import __version__
from rnnlang.autodiff.bptt import GradPrograms, grad_program
from rnnlang.diagnostics import RnnUserError, error
from rnnlang.ir.nodes import Program
from rnnlang.ir.printer import print_program
from rnnlang.ir.verify import verify
from rnnlang.lower import lower_program
from rnnlang.passes.pipeline import BACKWARD, PassLog, forward_passes, run_passes
from rnnlang.runtime import (
    BindMemo,
    Bound,
    QuickBind,
    bind_inputs,
    init_params,
    input_signature,
    param_dims_known,
    param_sizes,
    static_dims,
)
from rnnlang.syntax.ast import Module
from rnnlang.syntax.parse import parse

TARGETS = ("cpu", "reference", "cuda")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class CompileOptions:
    """Everything that changes generated code; the CLI maps its flags onto this."""

    target: str = "cpu"
    dtype: str = "float32"
    disabled_passes: frozenset[str] = frozenset()
    verify: bool = False
    cache_dir: Path | None = None
    seed: int = 0
    blas_threads: int | None = 1  # BLAS threads while generated code runs; None: leave as is
    stateful: bool = False  # also output every layer's final states (``final:<layer>.<s>``)
    threads: int | None = None  # cpu: batch slices or BLAS threads; None: every usable CPU
    parallel: str = "auto"  # cpu: "auto" (by per-step GEMM size), "slices" or "blas"


def parse_program(source_or_path: str | os.PathLike[str]) -> tuple[Module, Path | None]:
    """Parse a spec given as a path or as source text."""
    text, name, base = _read_source(source_or_path)
    return parse(text, name), base


def _read_source(src: str | os.PathLike[str]) -> tuple[str, str, Path | None]:
    if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src and (
            src.endswith(".rnn") or os.path.exists(src))):
        path = Path(src)
        if not path.is_file():
            why = "no such file" if not path.exists() else "not a regular file"
            raise error("E003", f"cannot read {path}: {why}", None)
        try:
            size = path.stat().st_size
            from rnnlang.syntax.parse import MAX_SOURCE_BYTES
            if size > MAX_SOURCE_BYTES:
                raise error("E001", f"{path}: file is larger than {MAX_SOURCE_BYTES} bytes", None)
            return path.read_text(encoding="utf-8"), str(path), path.parent
        except (OSError, UnicodeDecodeError) as exc:
            raise error("E003", f"cannot read {path}: {exc}", None) from None
    return str(src), "<string>", None


@dataclass
class Gradients:
    """Gradients by name: ``params`` (every parameter) and ``inputs`` (inputs and states)."""

    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    loss: float | None = None


class Model:
    """A compiled model. Parameters are allocated once every size is known (at compile time
    when all sizes are given or defaulted, else at the first call, from the data)."""

    def __init__(self, program: Program, options: CompileOptions, source_text: str,
                 source_name: str, static: dict[str, int], log: PassLog, raw: Program,
                 state_outputs: Mapping[str, str] | None = None):
        self.program = program
        # stateful models: final-state output name -> the initial-state input it feeds
        self.state_outputs: dict[str, str] = dict(state_outputs or {})
        self.raw_program = raw
        self.options = options
        self.source_text = source_text
        self.source_name = source_name
        self.static = static
        self.pass_log = log
        self.dtype = np.dtype(options.dtype)
        self.params: dict[str, np.ndarray] = {}
        self._grad: GradPrograms | None = None
        self._exec: Any = None
        self._param_sizes: dict[tuple[tuple[str, int], ...], dict[str, tuple[int, ...]]] = {}
        self._bind_memo: dict[Any, BindMemo] = {}
        self._quick: dict[Any, QuickBind] = {}
        self._grad_names: list[tuple[str, bool]] | None = None  # gradient name, of a parameter?
        self._mask_state_names = ([i.var.name for i in program.inputs if i.role == "mask"],
                                  [i.var.name for i in program.inputs if i.role == "state"])
        self._static_known = param_dims_known(program, static)
        if self._static_known:
            self.params = init_params(program, static, self.dtype, options.seed)

    # descriptive ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.program.name

    @property
    def input_names(self) -> list[str]:
        return [i.var.name for i in self.program.inputs if i.role in ("seq", "vec")]

    @property
    def output_names(self) -> list[str]:
        return list(self.program.output_names)

    @property
    def state_names(self) -> list[str]:
        return [i.var.name for i in self.program.inputs if i.role == "state"]

    def grad_programs(self) -> GradPrograms:
        if self._grad is None:
            g = grad_program(self.program)
            log = PassLog()
            chk = verify if self.options.verify else None
            fwd = run_passes(g.forward, BACKWARD, disabled=self.options.disabled_passes,
                             log=log, verify=chk)
            bwd = run_passes(g.backward, BACKWARD, disabled=self.options.disabled_passes,
                             log=log, verify=chk)
            self._grad = GradPrograms(fwd, bwd, g.residuals, g.cotangents, g.grads_of)
        return self._grad

    def emit(self, kind: str) -> str:
        """Text of one pipeline stage: ``ir``, ``grad-ir`` or ``python``."""
        if kind == "ir":
            return print_program(self.program)
        if kind == "grad-ir":
            g = self.grad_programs()
            return print_program(g.forward) + "\n" + print_program(g.backward)
        if kind == "python":
            return self._executor().source
        raise ValueError(kind)

    # execution ------------------------------------------------------------------------------
    def _executor(self) -> Any:
        if self._exec is None:
            from rnnlang.executors import make_executor
            self._exec = make_executor(self)
        return self._exec

    def _bind(self, inputs: Mapping[str, Any] | None, kw: Mapping[str, Any], lengths: Any,
              initial: Mapping[str, Any] | None) -> Bound:
        sig = None
        if not (inputs and kw) and lengths is None and not initial and (
                self.options.target != "cuda"):
            inputs = inputs or kw
            sig = input_signature(inputs, self.dtype)
            quick = self._quick.get(sig) if sig is not None else None
            if quick is not None:
                bound = quick.bind(inputs)
                self._check_params(bound.dims, quick.sizes)
                return bound
        given = dict(inputs or {})
        given.update(kw)
        device: dict[str, Any] = {}
        if self.options.target == "cuda":  # device arrays stay where they are
            from rnnlang.executors_cuda import split_device_inputs
            given, device = split_device_inputs(given, self.dtype)
            initial, dev_states = split_device_inputs(initial or {}, self.dtype)
            device.update(dev_states)
        bound = bind_inputs(self.program, self.static, given, lengths, initial, self.dtype,
                            self._bind_memo)
        bound.values.update(device)
        if not self.params:
            self.params = init_params(self.program, bound.dims, self.dtype, self.options.seed)
        if not self._static_known:  # once known, sizes stay known: not re-derived per call
            # sizes read from the first data are fixed from now on, like the parameters
            model_dims = {n for n, _ in self.program.dims}
            self.static.update({k: v for k, v in bound.dims.items() if k in model_dims})
            self._static_known = param_dims_known(self.program, self.static)
        sizes = self._check_params(bound.dims)
        if sig is not None and self._static_known:
            if len(self._quick) >= 64:  # many distinct shapes: start over
                self._quick.clear()
            self._quick[sig] = QuickBind(bound, *self._mask_state_names, self.dtype, sizes)
        return bound

    def _check_params(self, dims: Mapping[str, int], sizes: dict[str, tuple[int, ...]] | None
                      = None) -> dict[str, tuple[int, ...]]:
        """Parameters of the shapes these sizes need (a caller may have replaced them), in
        the model's dtype and C order; returns the shapes."""
        if sizes is None:
            key = tuple(sorted(dims.items()))
            sizes = self._param_sizes.get(key)
            if sizes is None:  # evaluating every size per call costs as much as a small call
                sizes = self._param_sizes[key] = param_sizes(self.program, dims)
        for name, shape in sizes.items():
            got = self.params.get(name)
            if got is None or got.shape != shape:
                raise error("E602", f"parameter {name} has shape "
                            f"{None if got is None else got.shape} but the data needs {shape}",
                            None, hint="sizes read from the data must match the parameters")
            if got.dtype != self.dtype or not got.flags.c_contiguous:
                self.params[name] = np.ascontiguousarray(got, dtype=self.dtype)
        return sizes

    def forward(self, inputs: Mapping[str, Any] | None = None, *, lengths: Any = None,
                initial: Mapping[str, Any] | None = None, return_state: bool = False,
                **kw: Any) -> Any:
        """Outputs by name. Sequences are (T, B, F); ``lengths`` masks padded steps.

        ``return_state=True`` (models compiled with ``stateful=True``) returns ``(outputs,
        states)``: ``outputs`` without the ``final:`` outputs, and ``states`` the final states
        keyed by initial-state input name (``enc.h0``), to pass as ``initial=`` for the next
        chunk of the same sequences."""
        if return_state and not self.state_outputs:
            raise error("E605", "return_state=True needs a model compiled with stateful=True"
                        if not self.options.stateful else
                        f"model '{self.name}' has no recurrent state to return", None,
                        hint="rnnlang.compile(..., stateful=True)"
                        if not self.options.stateful else None)
        b = self._bind(inputs, kw, lengths, initial)
        outs = dict(zip(self.program.output_names, self._executor().forward(b), strict=True))
        if not return_state:
            return outs
        return self.split_state(outs)

    def split_state(self, outs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                     dict[str, np.ndarray]]:
        """``(outputs, states)`` from all outputs of a stateful model: the ``final:`` outputs
        become states keyed by the initial-state input they feed."""
        plain = {k: v for k, v in outs.items() if k not in self.state_outputs}
        states = {self.state_outputs[k]: v for k, v in outs.items() if k in self.state_outputs}
        return plain, states

    __call__ = forward

    def vjp(self, inputs: Mapping[str, Any] | None = None, cotangents: Mapping[str, Any] | None
            = None, *, lengths: Any = None, initial: Mapping[str, Any] | None = None,
            **kw: Any) -> Gradients:
        """Gradients of ``sum(cotangent * output)`` over the given outputs."""
        b = self._bind(inputs, kw, lengths, initial)
        outs, grads = self._executor().forward_backward(b, lambda o: self._cots(o, cotangents))
        return self._pack(outs, grads)

    def value_and_grad(self, loss: Callable[[dict[str, np.ndarray]], tuple[float, Mapping[
            str, np.ndarray]]], inputs: Mapping[str, Any] | None = None, *, lengths: Any = None,
            initial: Mapping[str, Any] | None = None, **kw: Any) -> Gradients:
        """``loss(outputs) -> (value, d value / d outputs)``; returns value and gradients."""
        b = self._bind(inputs, kw, lengths, initial)
        box: dict[str, float] = {}

        def seeds(outs: list[np.ndarray]) -> list[np.ndarray]:
            value, cots = loss(dict(zip(self.program.output_names, outs, strict=True)))
            box["loss"] = float(value)
            return self._cots(outs, cots)

        outs, grads = self._executor().forward_backward(b, seeds)
        g = self._pack(outs, grads)
        g.loss = box["loss"]
        return g

    def _cots(self, outs: list[np.ndarray], cots: Mapping[str, Any] | None) -> list[np.ndarray]:
        cots = dict(cots or {})
        res = []
        for name, o in zip(self.program.output_names, outs, strict=True):
            c = cots.pop(name, None)
            arr = np.zeros_like(o) if c is None else np.asarray(c, dtype=self.dtype)
            if arr.shape != o.shape:
                raise error("E603", f"cotangent for '{name}' has shape {arr.shape}, output has "
                            f"{o.shape}", None)
            res.append(np.ascontiguousarray(arr))
        if cots:
            raise error("E603", f"no output named '{next(iter(cots))}'", None,
                        hint="outputs are " + ", ".join(self.program.output_names))
        return res

    def _pack(self, outs: list[np.ndarray], grads: list[np.ndarray]) -> Gradients:
        if self._grad_names is None:
            pnames = {v.name for v in self.program.param_vars}
            self._grad_names = [(v.name, v.name in pnames) for v in self.grad_programs().grads_of]
        gp: dict[str, np.ndarray] = {}
        gi: dict[str, np.ndarray] = {}
        for (name, is_param), arr in zip(self._grad_names, grads, strict=True):
            (gp if is_param else gi)[name] = arr
        return Gradients(gp, gi, dict(zip(self.program.output_names, outs, strict=True)))

    # parameters -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Parameters as ``.npz`` plus a JSON manifest, written atomically."""
        from rnnlang.checkpoint import save_arrays
        meta = {"rnnlang": __version__, "model": self.name, "dtype": self.options.dtype,
                "dims": self.static}
        save_arrays(Path(path), self.params, meta)

    def load(self, path: str | os.PathLike[str]) -> None:
        from rnnlang.checkpoint import load_arrays
        arrays, _ = load_arrays(Path(path))
        expected = {p.var.name for p in self.program.params}
        missing = expected - set(arrays)
        extra = set(arrays) - expected
        if missing or extra:
            raise error("E604", f"{path} does not match model '{self.name}': "
                        f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}", None)
        for k, v in arrays.items():
            if self.params and k in self.params and self.params[k].shape != v.shape:
                raise error("E604", f"{path}: parameter {k} has shape {v.shape}, the model "
                            f"has {self.params[k].shape}", None)
        self.params = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in arrays.items()}

    def workspace_bytes(self) -> int:
        """Bytes of work arrays this thread's calls keep for the next call (CPU target)."""
        ex = self._executor()
        return ex.workspace_bytes() if hasattr(ex, "workspace_bytes") else 0

    def release_workspaces(self) -> None:
        """Drop the work arrays kept between calls (the next call allocates them again)."""
        ex = self._executor()
        if hasattr(ex, "release_workspaces"):
            ex.release_workspaces()

    def describe(self) -> str:
        return json.dumps({"model": self.name, "inputs": self.input_names,
                           "outputs": self.output_names, "states": self.state_names,
                           "params": {k: list(v.shape) for k, v in self.params.items()}},
                          indent=2)


def build_program(source_or_path: str | os.PathLike[str], *, model: str | None = None,
                  options: CompileOptions = CompileOptions(),
                  dump: frozenset[str] = frozenset()) -> tuple[Program, Program, PassLog, str, str]:
    text, name, base = _read_source(source_or_path)
    module = parse(text, name)
    raw = lower_program(module, base, model)
    log = PassLog()
    chk = verify if options.verify else None
    if chk:
        chk(raw)
    prog = run_passes(raw, forward_passes(), disabled=options.disabled_passes, log=log,
                      verify=chk, dump=dump)
    return raw, prog, log, text, name


def _lower_stateful(source_or_path: str | os.PathLike[str], model: str,
                    ) -> tuple[Program, dict[str, str]]:
    """Lower model ``model`` again (it already lowered cleanly) with final-state outputs."""
    from rnnlang.lower import collect_cells
    from rnnlang.lower.model import lower_model_stateful
    text, name, base = _read_source(source_or_path)
    module = parse(text, name)
    cells = collect_cells(module, base)
    m = next(m for m in module.models if m.name == model)
    return lower_model_stateful(m, cells)


def compile(source_or_path: str | os.PathLike[str], target: str = "cpu",
            dtype: str = "float32", *, model: str | None = None, seed: int = 0,
            cache_dir: str | os.PathLike[str] | None = None, verify_ir: bool = False,
            disable_passes: tuple[str, ...] = (), blas_threads: int | None = 1,
            stateful: bool = False, threads: int | None = None, parallel: str = "auto",
            **dims: int) -> Model:
    """Compile a `.rnn` spec (a path or source text) for ``target`` (cpu, reference, cuda).

    ``stateful=True`` adds every layer's final states as outputs ``final:<layer>.<state>``
    (stacks: ``final:enc.0.h``), so that a long sequence can be run chunk by chunk with
    ``forward(..., return_state=True)``; bidirectional layers, ``from`` layers and states with
    an initializer cannot be stateful (E219).

    ``threads`` (cpu target): a call whose batch rows are independent (every model the
    language can write, checked on the IR) runs as up to this many batch slices in parallel,
    each with its whole time loop; a call whose per-step GEMM is large (the medium benchmark
    case and up, `rnnlang.parallel.WIDE_GEMM_FLOPS`) instead runs whole, with BLAS on this many
    threads. None uses every CPU this process may run on, 1 turns both off. Results are the
    same up to float rounding (the order of the weight-gradient sums).

    ``parallel`` picks between the two: "auto" (the size rule above), "slices" (always batch
    slices: slower on an idle machine at medium sizes, but degrades gracefully when other
    processes hold cores, where 2-thread BLAS waits for descheduled threads at every step) or
    "blas" (always whole-batch calls with BLAS on every thread)."""
    if threads is not None and not 1 <= threads <= 1024:
        raise error("E604", f"threads must be between 1 and 1024, got {threads}", None)
    from rnnlang.parallel import MODES
    if parallel not in MODES:
        raise error("E604", f"unknown parallel mode '{parallel}'", None,
                    hint="one of " + ", ".join(MODES))
    if target not in TARGETS:
        raise error("E604", f"unknown target '{target}'", None, hint="one of " + ", ".join(TARGETS))
    if dtype not in DTYPES:
        raise error("E604", f"unknown dtype '{dtype}'", None, hint="float32 or float64")
    opts = CompileOptions(target, dtype, frozenset(disable_passes), verify_ir,
                          Path(cache_dir) if cache_dir is not None else None, int(seed),
                          blas_threads, bool(stateful), threads, parallel)
    raw, prog, log, text, name = build_program(source_or_path, model=model, options=opts)
    state_outputs: dict[str, str] = {}
    if stateful:
        raw, state_outputs = _lower_stateful(source_or_path, raw.name)
        log = PassLog()
        chk = verify if opts.verify else None
        if chk:
            chk(raw)
        prog = run_passes(raw, forward_passes(), disabled=opts.disabled_passes, log=log,
                          verify=chk)
    static = static_dims(prog, dims)
    m = Model(prog, opts, text, name, static, log, raw, state_outputs)
    if target == "cuda":
        from rnnlang.executors_cuda import require_cuda
        require_cuda()
    return m


__all__ = ["CompileOptions", "Gradients", "Model", "RnnUserError", "compile", "parse_program"]
