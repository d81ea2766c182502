"""Timing rnnlang against baselines for any spec: the library behind ``rnnc bench``.

`timing` holds the interleaved median timer (shared with benchmarks/bench_cpu.py), `spec` the
per-spec benchmark, and `torch_eval` (needs torch) an evaluator of rnnlang IR in eager PyTorch
used as the torch-loop baseline.
"""

from __future__ import annotations

import importlib.util


def have_torch() -> bool:
    """Whether PyTorch is importable (the torch-loop baseline and its tests need it)."""
    return importlib.util.find_spec("torch") is not None


__all__ = ["have_torch"]
