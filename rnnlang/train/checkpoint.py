"""Training checkpoints: parameters, optimizer state, RNG state, epoch/step and data cursor.

One ``.npz`` (read with ``allow_pickle=False``) plus a JSON manifest, written through
`rnnlang.checkpoint.save_arrays` (temp file in the same folder, fsync, ``os.replace``; the
folder is fsynced afterwards). Arrays are prefixed ``param/``, ``opt/``, ``best/`` and
``data/``. The manifest records the model's IR hash, sizes, dtype and the versions that wrote
it. A checkpoint with non-finite parameters is never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlang import __version__
from rnnlang.checkpoint import load_arrays, save_arrays
from rnnlang.diagnostics import error

if TYPE_CHECKING:
    from rnnlang.api import Model

KIND = "rnnlang-train-checkpoint"
FORMAT = 1


def ir_hash(model: Model) -> str:
    """What the parameters mean: the lowered (unoptimized) IR of the model, without the
    final-state outputs of a stateful model (the same parameters serve both)."""
    from dataclasses import replace

    from rnnlang.ir.printer import print_program
    prog = model.raw_program
    if model.state_outputs:
        keep = [i for i, n in enumerate(prog.output_names) if n not in model.state_outputs]
        prog = replace(prog, outputs=tuple(prog.outputs[i] for i in keep),
                       output_names=tuple(prog.output_names[i] for i in keep))
    return hashlib.sha256(print_program(prog).encode()).hexdigest()[:20]


@dataclass
class Checkpoint:
    """A training checkpoint in memory."""

    params: dict[str, np.ndarray]
    opt_state: dict[str, np.ndarray]
    meta: dict[str, Any]
    best: dict[str, np.ndarray] = field(default_factory=dict)
    data: dict[str, np.ndarray] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: Model, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically; refuses (E803) to write non-finite parameters or state."""
    for group, arrays in (("parameter", ckpt.params), ("optimizer state", ckpt.opt_state),
                          ("best parameter", ckpt.best)):
        for k, v in arrays.items():
            if not np.all(np.isfinite(v)):
                raise error("E803", f"not writing checkpoint {path}: {group} '{k}' is not "
                            "finite", None)
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("param/", ckpt.params), ("opt/", ckpt.opt_state),
                          ("best/", ckpt.best), ("data/", ckpt.data)):
        arrays.update({prefix + k: v for k, v in group.items()})
    meta = dict(ckpt.meta, kind=KIND, format=FORMAT, rnnlang=__version__,
                numpy=np.__version__, model=model.name, ir_hash=ir_hash(model),
                dtype=model.options.dtype, dims=dict(model.static))
    p = Path(path)
    save_arrays(p, arrays, meta)
    _fsync_dir(p.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a training checkpoint; corrupted, truncated or pickled files give E611."""
    p = Path(path)
    arrays, meta = load_arrays(p)
    if meta.get("kind") != KIND:
        raise error("E804", f"{p} is not a training checkpoint (it holds parameters only)",
                    None, hint="use it with --params, or resume from a file written by "
                    "rnnc train --checkpoint")
    if meta.get("format") != FORMAT:
        raise error("E804", f"{p} has checkpoint format {meta.get('format')}, this rnnlang "
                    f"reads format {FORMAT}", None)
    groups: dict[str, dict[str, np.ndarray]] = {"param": {}, "opt": {}, "best": {}, "data": {}}
    for k, v in arrays.items():
        prefix, _, name = k.partition("/")
        if prefix not in groups or not name:
            raise error("E611", f"{p}: unexpected array '{k}'", None)
        groups[prefix][name] = v
    return Checkpoint(groups["param"], groups["opt"], meta, groups["best"], groups["data"])


def check_compatible(path: str | Path, model: Model, ckpt: Checkpoint) -> None:
    """E804 unless ``ckpt`` was written for this model (same IR, sizes and shapes, dtype)."""
    meta = ckpt.meta
    if meta.get("model") != model.name or meta.get("ir_hash") != ir_hash(model):
        raise error("E804", f"{path} was written for a different model ('{meta.get('model')}', "
                    f"IR hash {meta.get('ir_hash')}; this is '{model.name}', "
                    f"{ir_hash(model)})", None,
                    hint="resume with the same spec file and sizes")
    if meta.get("dtype") != model.options.dtype:
        raise error("E804", f"{path} holds {meta.get('dtype')} parameters, the model is "
                    f"{model.options.dtype}", None, hint="use the same --dtype")
    expected = {p.var.name for p in model.program.params}
    missing, extra = expected - set(ckpt.params), set(ckpt.params) - expected
    if missing or extra:
        raise error("E804", f"{path} does not match model '{model.name}': missing "
                    f"{sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}", None)
    dims = {k: int(v) for k, v in (meta.get("dims") or {}).items()}
    for k, v in model.static.items():
        if k in dims and dims[k] != v:
            raise error("E804", f"{path} was trained with {k} = {dims[k]}, the model has "
                        f"{k} = {v}", None, hint=f"use -D {k}={dims[k]}")
    for k, v in ckpt.params.items():
        have = model.params.get(k)
        if have is not None and have.shape != v.shape:
            raise error("E804", f"{path}: parameter {k} has shape {v.shape}, the model has "
                        f"{have.shape}", None)
