"""Write generated modules to a cache folder atomically and import them.

Numba's ``cache=True`` only works for functions defined in real files, so each module lives at
``<cache>/<hash>.py`` where the hash covers the source text (itself a pure function of the IR,
dtype and flags), the rnnlang version, the Numba version and the text of the runtime modules
whose jitted functions generated code calls (`RUNTIME`): Numba links a callee's code into
each caller's cache entry and checks only the caller's own file for staleness, so a changed
kernel would otherwise keep running from old entries. A damaged entry is rewritten.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numba

from rnnlang import __version__
from rnnlang.diagnostics import InternalCompilerError


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rnnlang"


RUNTIME = ("kernels.py", "blas.py", "packed.py", "cuda_kernels.py")  # in rnnlang/codegen/


@functools.cache
def runtime_digest() -> str:
    h = hashlib.sha256()
    for name in RUNTIME:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()


def module_key(source: str) -> str:
    h = hashlib.sha256()
    for part in (source, __version__, numba.__version__, runtime_digest()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_module(source: str, cache_dir: Path | None) -> ModuleType:
    try:
        ast.parse(source)
    except SyntaxError as exc:
        raise InternalCompilerError(f"generated code does not parse: {exc}") from exc
    root = cache_dir or default_cache_dir()
    key = module_key(source)
    path = root / f"rnn_{key}.py"
    try:
        current = path.read_bytes() if path.exists() else None
    except OSError:
        current = None
    if current != source.encode():
        if current is not None:  # damaged or stale entry: drop Numba's cache for it too
            shutil.rmtree(root / "__pycache__", ignore_errors=True)
        atomic_write(path, source.encode())
    name = f"rnnlang_generated_{key}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InternalCompilerError(f"cannot import generated module {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod
