"""rnnlang: recurrent networks written as equations, compiled to fused Numba code."""

from __future__ import annotations

__version__ = "0.1.0"

from rnnlang.api import Model, compile, parse_program  # noqa: E402
from rnnlang.diagnostics import InternalCompilerError, RnnUserError  # noqa: E402

__all__ = ["Model", "compile", "parse_program", "RnnUserError", "InternalCompilerError", "__version__"]
